"""Where tests (and their helper scripts) find the reference material: ``tests/data/reference`` in the repository,
or the folder named by the environment variable ``VIDTLDR_REFERENCE`` (for example the unpacked originals in
``../shared/reference``; both layouts are read by :func:`fixtures_official.load_case`)."""
from __future__ import annotations

import os
from pathlib import Path

IN_REPO = Path(__file__).resolve().parent / "data" / "reference"
REFERENCE = Path(os.environ["VIDTLDR_REFERENCE"]) if os.environ.get("VIDTLDR_REFERENCE") else IN_REPO


def reference_path(*parts: str) -> Path:
    """``REFERENCE / parts``; a missing file fails with its path (the reference material is part of the test
    contract: it is never skipped)."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        origin = "VIDTLDR_REFERENCE" if REFERENCE != IN_REPO else "the in-repo copy (tests/data/reference)"
        raise FileNotFoundError(f"reference file not found: {path} (from {origin})")
    return path


def fixture_path(case: str) -> Path:
    """The golden fixture file of one case, e.g. ``fn_A_b1_t2352_c768``."""
    return reference_path("fixtures", f"{case}.safetensors")
