"""A real one-node SLURM cluster on localhost (tests/cluster/slurm.sh): scripts/slurm/train.sbatch preempted by its
time-limit warning and by `scontrol requeue`, and scripts/reproduce.py --launcher slurm submitting a table as one
job array. The daemons run for this module only, under their own state folder; skipped only where the Debian
packages cannot be installed."""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, finish, python_env, start_torchrun, tiny_run_args

pytestmark = pytest.mark.slow
SLURM_SH = REPO / "tests" / "cluster" / "slurm.sh"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"
NOT_INSTALLABLE = 3  # slurm.sh's exit code when apt-get cannot install the packages


@dataclass
class Cluster:
    state: Path
    env: dict  # SLURM_CONF and this venv first on PATH (sbatch exports the caller's environment)

    def run(self, *argv, check=True, timeout=60) -> subprocess.CompletedProcess:
        r = subprocess.run(list(map(str, argv)), env=self.env, cwd=REPO, capture_output=True, text=True,
                           timeout=timeout)
        assert not check or r.returncode == 0, f"{argv}: {r.stderr}"
        return r

    def job(self, job_id: str) -> dict:
        """scontrol show job's fields (JobState, Restarts, ...); {} once SLURM forgot the job."""
        r = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f) if r.returncode == 0 else {}

    def wait_for(self, what: str, predicate, timeout: float, poll: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise AssertionError(f"not within {timeout} s: {what}\n{self.run('squeue', check=False).stdout}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("slurmctld") is None and os.geteuid() != 0:
        pytest.skip("slurm-wlm is not installed, and installing it (apt-get) needs root")
    # not under pytest's tmp folder: munged runs as the munge user, which must reach its socket there
    state = Path(tempfile.mkdtemp(prefix="pgt-slurm-"))
    ports = {"PGT_SLURMCTLD_PORT": str(free_port()), "PGT_SLURMD_PORT": str(free_port())}  # beside any other SLURM
    up = subprocess.run(["bash", SLURM_SH, "up", state], capture_output=True, text=True, timeout=600,
                        env={**os.environ, **ports})
    if up.returncode == NOT_INSTALLABLE:
        shutil.rmtree(state)
        pytest.skip(f"SLURM cannot be installed here: {up.stderr.strip()}")
    try:
        assert up.returncode == 0, f"slurm.sh up failed: {up.stderr}"
        env = python_env(1, {"SLURM_CONF": str(state / "slurm.conf"),
                             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        yield Cluster(state, env)
    finally:
        down = subprocess.run(["bash", SLURM_SH, "down", state], capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
        shutil.rmtree(state, ignore_errors=True)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def sbatch_args(run_dir: Path) -> list[str]:
    """train.sbatch's CONFIG [key=value ...] for a 2-rank CPU run of about a minute on this 2-core machine: long
    enough that the time-limit warning (20-50 s after the start, below) lands mid-run."""
    args = tiny_run_args(run_dir, "run.log_interval=1", img_size=32, batch=16, train_size=3200, val_size=16)
    assert args[0] == "--config"
    return args[1:]


def test_sbatch_preempted_by_time_limit_warning_and_by_requeue_ends_bit_exact(slurm, tmp_path):
    """One job, three segments: USR1 before the time limit (the script requeues itself), then `scontrol requeue`
    (SLURM requeues it), then the rest; the weights equal an uninterrupted 2-rank run of the same config."""
    out = tmp_path / "job.out"
    log = lambda: out.read_text() if out.exists() else ""  # noqa: E731
    job = slurm.run("sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--time=10", "--signal=B:USR1@70",
                    f"--output={out}", "--export=ALL,PGT_NPROC_PER_NODE=2", SBATCH,
                    *sbatch_args(tmp_path / "slurm")).stdout.strip()
    reference = start_torchrun(2, ["--config", *sbatch_args(tmp_path / "reference")])  # meanwhile, uninterrupted
    # The warning must come once the ranks train: a loaded machine took over 26 s to start them. So the limit is
    # cut then, to at least 75 s ahead: slurmctld checks limits about every 30 s and warns once now + 70 s + 30 s
    # reaches the limit, i.e. at its next check (measured: @60 with --time=2 came at +53 s, @30 with --time=1 at +22 s)
    slurm.wait_for("the ranks to train", lambda: "pgt-train: resnet18" in log(), timeout=240)
    time.sleep(5)  # rank 0's banner comes just before its signal handler; rank 1 may be a little behind
    h, m, sec = map(int, slurm.job(job)["RunTime"].split(":"))
    limit_s = 60 * math.ceil((3600 * h + 60 * m + sec + 75) / 60)
    slurm.run("scontrol", "update", f"JobId={job}", f"TimeLimit={limit_s // 60}")
    slurm.wait_for("the warning's requeue", lambda: slurm.job(job).get("Restarts", "0") != "0", timeout=200)
    slurm.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")  # no second warning
    slurm.wait_for("segment 2 training", lambda: log().count("pgt-train: resnet18") >= 2, timeout=120)
    time.sleep(5)  # every rank's handler in place, a few steps into segment 2
    slurm.run("scontrol", "requeue", job)
    slurm.wait_for("the job's end", lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", None)
                   or not slurm.job(job), timeout=300)
    text = log()
    reference = finish(reference, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert slurm.job(job).get("JobState", "COMPLETED") == "COMPLETED", text[-3000:]

    warned = [int(t) for t in re.findall(r"USR1 at \+(\d+) s", text)]
    assert len(warned) == 1 and warned[0] < limit_s, text  # before the limit
    assert text.count("preempted (exit 75); requeueing") == len(warned), text  # the script requeued those itself
    saves = [int(s) for s in re.findall(r"saved \S+/last\.pth at step (\d+); continue", text)]
    assert len(saves) == len(warned) + 1, text  # and once for `scontrol requeue`
    assert saves == sorted(set(saves)) and 0 < saves[0] and saves[-1] < 2 * 200, text  # mid-run, always forward
    assert f"restart {len(saves)}," in text and text.count("ranks ended with exit code 75") >= len(warned), text
    assert_same_weights(tmp_path / "slurm", tmp_path / "reference")


TINY_ROWS = ["data.loader=synthetic", "data.train_size=480", "data.val_size=16", "data.img_size=32",
             "model.num_classes=4", "data.batch_size=8", "data.workers=0", "sched.epochs=2", "sched.warmup_epochs=1",
             "optim.lr=0.002", "run.checkpoint_every=10", "run.progress=false"]
# each row: about 20 s of one process (no BN: a small LR); a checkpoint every 10 steps tells the test it trains


def test_reproduce_submits_a_table_as_one_array_and_reruns_submit_only_what_is_missing(slurm, tmp_path):
    runs = tmp_path / "runs"
    argv = [sys.executable, REPO / "scripts" / "reproduce.py", "--table", "2", "--rows", "1,2,3", "--launcher",
            "slurm", "--gpus", "0", "--cpus-per-task", "1", "--max-running", "2", "--runs-root", runs, *TINY_ROWS]
    first = slurm.run(*argv).stdout
    array = re.search(r"submitted job array (\d+): 3 task", first).group(1)
    assert first.count(" -> task ") == 3
    again = slurm.run(*argv).stdout  # queued or running: nothing new
    assert again.count(f"queued as {array}_") == 3 and "nothing to submit" in again, again
    folders = [Path(p) for p in re.findall(r": \w+ (\S+) -> task", first)]
    assert [(f / "slurm_job").read_text().strip() for f in folders] == [f"{array}_{k}" for k in range(3)]

    slurm.run("scancel", f"{array}_2")  # row 3 ends unfinished: the next rerun submits it again
    log0 = runs / "slurm" / f"pgt-table2-{array}_0.out"
    slurm.wait_for("row 1 training", lambda: (folders[0] / "last.pth").exists(), timeout=180)
    slurm.run("scontrol", "requeue", f"{array}_0")  # mid-run
    slurm.wait_for("rows 1 and 2", lambda: not any(slurm.job(f"{array}_{k}").get("JobState") in
                                                   ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")
                                                   for k in (0, 1)), timeout=240)
    text = log0.read_text()
    assert "restart 1," in text and "resumed from" in text and "SIGTERM: saved" in text, text

    third = slurm.run(*argv).stdout
    assert third.count(": skip ") == 2 and third.count(" -> task 0") == 1, third
    second_array = re.search(r"submitted job array (\d+): 1 task", third).group(1)
    slurm.wait_for("row 3", lambda: slurm.job(f"{second_array}_0").get("JobState") in ("COMPLETED", "FAILED", None)
                   or not slurm.job(f"{second_array}_0"), timeout=180)
    last = slurm.run(*argv).stdout
    assert last.count(": skip ") == 3 and "nothing to submit" in last, last
    for folder in folders:
        summary = (folder / "summary.csv").read_text().splitlines()
        assert [row.split(",")[0] for row in summary[1:]] == ["1", "2"], folder  # every epoch once


def test_reproduce_dry_run_prints_the_array_and_submits_nothing(tmp_path):
    r = subprocess.run([sys.executable, REPO / "scripts" / "reproduce.py", "--table", "1", "--launcher", "slurm",
                        "--gpus", "4", "--nodes", "2", "--partition", "gpu", "--account", "proj", "--time", "24:00:00",
                        "--max-running", "3", "--dry-run", "--runs-root", tmp_path, "sched.epochs=90"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sbatch = shlex.split(r.stdout.splitlines()[-1].split(": ", 1)[1])
    for option in ("--array=0-13%3", "--nodes=2", "--gpus-per-node=4", "--partition=gpu", "--account=proj",
                   "--time=24:00:00"):
        assert option in sbatch, (option, sbatch)
    assert sbatch[-3:-1] == [str(SBATCH), "--rows"] and not list(tmp_path.iterdir())  # nothing written
    commands = [shlex.split(line) for line in r.stdout.splitlines() if line.startswith("    ")]
    assert len(commands) == 14 and all("sched.epochs=90" in c for c in commands)
    assert "reproduce: sched.epochs=90 changes the recipe of rows 1-14 of 14" in r.stdout  # and names their folders
