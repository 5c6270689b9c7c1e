from pathlib import Path

import pytest
import torch

from reference_data import REFERENCE, reference_path  # noqa: F401  (REFERENCE: kept for tests importing it here)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """tests/data/reference, or the folder named by VIDTLDR_REFERENCE (see tests/reference_data.py)."""
    return reference_path()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
