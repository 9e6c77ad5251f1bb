"""Fixtures only; what tests share otherwise lives in tests/helpers.py (import it from there)."""
from pathlib import Path

import pytest

from tests.helpers import REPO, make_jpeg_folder, run_cli  # noqa: F401  (tests not yet on tests.helpers import these)


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("jpegs"))
