"""Fixtures only; what tests share otherwise lives in tests/helpers.py (import it from there)."""
from pathlib import Path

import pytest
import torch

# In-process runs too: one thread (see helpers.python_env for the measurement that set this).
torch.set_num_threads(1)

from tests.helpers import REPO, make_jpeg_folder, run_cli  # noqa: F401  (tests not yet on tests.helpers import these)


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"))
