import os
from pathlib import Path

import pytest
import torch

REFERENCE = Path(os.environ.get("VIDTLDR_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    assert REFERENCE.is_dir(), f"shared reference directory not found at {REFERENCE} (set VIDTLDR_REFERENCE)"
    return REFERENCE


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
