"""The benchmark and GPU-check scripts run end to end here (figures are printed, not asserted: no timing tests)."""
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_python

pytestmark = pytest.mark.slow  # each test runs a script in a subprocess


def test_bench_prints_all_three_figures(tmp_path):
    result = run_python("scripts/bench.py", "--device", "cpu", "--img-size", "32", "--batch", "8", "--classes", "10",
                        "--steps", "1", "--repeats", "1", "--loader-images", "20", "--jpeg-size", "48", "--workers", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for figure in ("1. PGT cost", "ratio B/A per A-B-B-A round", "PGT head extra time / train step",
                   "2. trainer efficiency", "engine / bare per round", "diagnostics, amortised over 200 steps",
                   "3. loader vs trainer", "loader / trainer"):
        assert figure in out
    assert "torch " in out.splitlines()[0] and "threads" in out.splitlines()[0]


def test_gpu_check_says_in_one_line_that_cuda_is_absent(tmp_path):
    out = tmp_path / "gc"
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        "gpu_check: CUDA is not available on this machine; nothing measured (report.json says so)"]
    assert json.loads((out / "report.json").read_text())["cuda_available"] is False
    assert (out / "gpu_check.log").read_text().strip().startswith("gpu_check: CUDA is not available")


def test_gpu_check_plan_fits_its_minutes_with_the_issue_sections_first():
    """Issue 17: one run within 8 minutes; what it asks for (exactness, the skipped step, end to end, DALI) runs
    before the extras (throughput, short_training), which the time guard may skip."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    args = gpu_check.parse_args([])
    assert args.max_minutes == 8.0 and sum(gpu_check.SECTION_MINUTES.values()) <= args.max_minutes
    assert args.sections[:4] == ["exactness", "skipped_step", "end_to_end", "dali"]
    assert sorted(args.sections) == sorted(gpu_check.SECTION_MINUTES)
