"""Fixtures only; what tests share otherwise lives in tests/helpers.py (import it from there)."""
import sys
from pathlib import Path

import pytest
import torch

# In-process runs too: one thread (see helpers.python_env for the measurement that set this).
torch.set_num_threads(1)

from tests.helpers import REPO, make_jpeg_folder, run_cli  # noqa: F401  (tests not yet on tests.helpers import these)


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"))


@pytest.fixture
def tables_only(monkeypatch):
    """pgt-report as without its `report` extra: tables, no figures (matplotlib blocked as when it is not
    installed). For tests that read only tables: drawing costs a second a report."""
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "pgt_train.report.figures", raising=False)
