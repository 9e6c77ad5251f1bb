"""DDP and gradient accumulation change how the global batch is computed, never what is learned.

2 processes (torchrun, gloo, CPU), 1 process, and 1 process with 2 accumulation steps train the same
model on the same deterministic synthetic data at the same global batch; their weights must agree up
to float summation order. No BatchNorm (model.norm=none), so per-rank batch statistics do not enter.

Tolerance, measured: the weights of equivalent runs differ by at most ~3e-5 (a few 1e-3 of the
update |w - w0| of the worst tensor). That is not a pipeline difference: the 1-process run alone,
with OMP_NUM_THREADS=2 instead of 1, differs from itself by the same amount (summation order flips a
ReLU here and there). Real bugs are ~1000x larger: doubling the LR (gradients summed, not averaged)
or stepping on half the batch (no all-reduce, wrong per-rank batch) move weights by ~0.1, i.e. by
more than the whole update.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgt_train import launch
from pgt_train.writers import read_summary
from tests.helpers import REPO, finish, python_env, start_torchrun, tiny_run_args

GLOBAL_BATCH, TRAIN_SIZE, VAL_SIZE = 32, 100, 101  # 100: a partial last batch to drop; 101: odd over 2 ranks
MAX_ABS_DIFF = 2e-4  # measured <= 3e-5; bugs >= 1e-1
MAX_REL_DIFF = 2e-2  # per tensor |w_a - w_b| / |w_a - w0|: measured <= 2.4e-3; bugs >= 1


def train_args(run_dir, *extra):
    return tiny_run_args(run_dir, "model.norm=none", "amp.dtype=none", "run.device=cpu", *extra, classes=10,
                         batch=GLOBAL_BATCH, img_size=32, train_size=TRAIN_SIZE, val_size=VAL_SIZE, warmup=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three trainings at once (each process is single-threaded)."""
    tmp = tmp_path_factory.mktemp("ddp")
    procs = {
        "ddp2": start_torchrun(2, train_args(tmp / "ddp2")),
        "single": start_torchrun(1, train_args(tmp / "single")),
        "accum2": start_torchrun(1, train_args(tmp / "accum2", "data.accum_steps=2")),
    }
    results = {name: finish(p) for name, p in procs.items()}
    for name in results:
        assert results[name].returncode == 0, f"{name}:\n{results[name].stdout}\n{results[name].stderr}"
    return {name: (tmp / name, r) for name, r in results.items()}


def weights(run_dir):
    return torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["model"]


def initial_weights():
    from pgt_train import models, trainer
    trainer.seed_all(0)  # what the trainer does before building the model (seed: 0)
    return models.build_model("resnet18", num_classes=10, norm="none").state_dict()


def summary(run_dir):
    return read_summary(run_dir / "summary.csv")


def assert_same_training(a_dir, b_dir):
    a, b, w0 = weights(a_dir), weights(b_dir), initial_weights()
    assert a.keys() == b.keys() == w0.keys()
    keys = [k for k in a if a[k].is_floating_point()]
    max_update = max((a[k] - w0[k]).abs().max().item() for k in keys)
    max_diff = max((a[k] - b[k]).abs().max().item() for k in keys)
    rel = {k: ((a[k] - b[k]).norm() / (a[k] - w0[k]).norm().clamp_min(1e-12)).item() for k in keys}
    worst = max(rel, key=rel.get)
    assert max_update > 100 * MAX_ABS_DIFF, f"training barely moved the weights (max |w - w0| = {max_update:.3g})"
    assert max_diff <= MAX_ABS_DIFF, f"max |w_a - w_b| = {max_diff:.3g} (update {max_update:.3g})"
    assert rel[worst] <= MAX_REL_DIFF, f"{worst}: |w_a - w_b| / |w_a - w0| = {rel[worst]:.3g}"
    # The logged metrics are over the same images: the same loss up to rounding, the same hits.
    rows_a, rows_b = summary(a_dir), summary(b_dir)
    assert len(rows_a) == len(rows_b) == 2
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "val_loss", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-3, abs=1e-6), key
        for key in ("train_top1", "val_top1", "val_top5"):  # a hit may flip on a near-tie: 1 image at most
            assert abs(float(ra[key]) - float(rb[key])) <= 100 / (3 * GLOBAL_BATCH) + 1e-6, key


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    assert "on 2 x cpu" in runs["ddp2"][1].stdout and "on 1 x cpu" in runs["single"][1].stdout
    assert_same_training(runs["single"][0], runs["ddp2"][0])


@pytest.mark.slow
def test_every_val_image_counted_once(runs):
    for name in ("ddp2", "single", "accum2"):
        assert [int(r["val_images"]) for r in summary(runs[name][0])] == [VAL_SIZE, VAL_SIZE], name


@pytest.mark.slow
def test_accumulation_trains_like_one_batch(runs):
    assert_same_training(runs["single"][0], runs["accum2"][0])


def test_batch_that_does_not_split_exits_2_with_one_line(tmp_path, capsys):
    from pgt_train import cli  # in-process: the check needs no second process and no torchrun
    code = cli.main(train_args(tmp_path / "bad", "data.batch_size=30", "data.accum_steps=4"))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgt-train: error: data.batch_size=30"), err
    assert "4 accumulation steps" in lines[0] and "multiple of 4" in lines[0]
    assert not (tmp_path / "bad" / "last.pth").exists()


def start_pgt_torchrun(nproc: int, args, *launcher_args) -> subprocess.Popen:
    """The installed pgt-torchrun console script (as a user runs it), --standalone, one thread per rank."""
    exe = Path(sys.executable).with_name("pgt-torchrun")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pgt_train.launch"]
    return subprocess.Popen([*cmd, "--standalone", f"--nproc_per_node={nproc}", *launcher_args, "-m", "pgt_train",
                             *map(str, args)], cwd=REPO, env=python_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


@pytest.mark.slow
def test_sigterm_to_pgt_torchrun_stops_all_ranks_at_one_step_exits_75_and_resumes_exactly(tmp_path):
    """SIGTERM to the launcher itself (srun, docker stop): pgt-torchrun forwards it, the ranks agree on a step
    (every run.log_interval steps), rank 0 writes last.pth, and the launcher exits 75 with no traceback (plain
    torchrun: a traceback and exit 1). `--resume auto` then ends with the weights of an uninterrupted run."""
    sync_every = 10
    # 480 images / 32 = 15 steps an epoch: the first agreement point (step 10) lies inside epoch 1
    extra = ("data.train_size=480", "run.checkpoint_every=1", f"run.log_interval={sync_every}")
    straight = start_torchrun(2, train_args(tmp_path / "straight", *extra))
    run_dir = tmp_path / "preempted"
    proc = start_pgt_torchrun(2, train_args(run_dir, *extra))
    wait_for(run_dir / "last.pth", proc)
    proc.send_signal(signal.SIGTERM)
    stopped = finish(proc)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr and "SIGTERM: saved" in stopped.stdout, stopped.stdout + stopped.stderr
    state = torch.load(run_dir / "last.pth", weights_only=True)
    counters = state["counters"]
    assert counters["steps_done"] % sync_every == 0 or counters["epoch_steps_done"] == 0, "ranks stop only at an agreement point"
    assert counters["steps_done"] < 30 and len(state["rng"]) == 2, "stopped early, with both ranks' RNG states"
    resumed = finish(start_pgt_torchrun(2, train_args(run_dir, *extra, "--resume", "auto")))
    assert resumed.returncode == 0, resumed.stderr
    assert finish(straight).returncode == 0
    a, b = weights(tmp_path / "straight"), weights(run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in summary(run_dir)] == ["1", "2"]


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_and_rank_0_names_it(tmp_path):
    """SIGTERM to rank 1 alone (a node's scheduler signalling its own tasks): the ranks agree at the next
    agreement point, rank 0, which received nothing, saves last.pth and its log names SIGTERM, and the job exits
    75 with no traceback."""
    extra = ("data.train_size=480", "run.checkpoint_every=1", "run.log_interval=5")
    run_dir = tmp_path / "run"
    proc = start_pgt_torchrun(2, train_args(run_dir, *extra))
    wait_for(run_dir / "last.pth", proc)
    os.kill(rank_pids(proc)[1], signal.SIGTERM)
    stopped = finish(proc)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    assert "SIGTERM: saved" in stopped.stdout and "none: saved" not in stopped.stdout, stopped.stdout


@pytest.mark.slow
def test_a_lock_taken_over_under_ddp_ends_the_job_with_rank_0s_one_line(tmp_path):
    """Another writer takes the run folder (its lock file replaced by one that writer holds): rank 0 stops with its
    one line and exit 2; rank 1, whose next collective fails, adds nothing (before: a second line quoting gloo's
    'Connection closed by peer'); the job ends within seconds."""
    run_dir = tmp_path / "run"
    # a short timeout makes the heartbeat's wait (3 beats) shorter than torchrun's grace before it kills rank 1
    proc = start_pgt_torchrun(2, train_args(run_dir, "data.train_size=480", "run.checkpoint_every=1",
                                            "run.log_interval=2", "run.dist_timeout_s=10", "sched.epochs=3"))
    holder = None
    try:
        wait_for(run_dir / "last.pth", proc)
        taken = run_dir / "taken"
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
                                   "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                                   str(taken)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        os.replace(taken, run_dir / ".pgt-train.lock")
        t0 = time.monotonic()
        result = finish(proc, timeout=120)
        took = time.monotonic() - t0
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and f"PID {holder.pid} now writes there" in lines[0], result.stderr
    assert took < 30, f"the job took {took:.1f} s to end"


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{RANK: pid} of the launcher's ranks, read from each process's environment."""
    pids = {}
    for pid in launch.worker_groups(launcher.pid):
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        pids[int(env["RANK"])] = pid
    return pids


def test_launcher_finds_the_ranks_it_started_and_sees_a_stopped_one():
    """pgt-torchrun forwards signals to its children that lead their own session (torchrun's ranks) and kills a
    stopped one at shutdown; both read /proc. Fast: a sleeping child stands in for a rank."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert child.pid in launch.worker_groups(os.getpid())
        assert not launch.is_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.time() + 5
        while not launch.is_stopped(child.pid) and time.time() < deadline:
            time.sleep(0.01)
        assert launch.is_stopped(child.pid)
    finally:
        child.kill()
        child.wait()
    assert child.pid not in launch.worker_groups(os.getpid())


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_within_the_timeout_with_one_line_naming_it(tmp_path):
    """SIGSTOP rank 1 mid-epoch: rank 0's next all-reduce waits run.dist_timeout_s, then the heartbeat says which
    rank went silent; one line, exit 1, and the job (the stopped rank too) is gone within the timeout + a few s.
    Before: rank 0 waited 30 min (gloo's default) without a word."""
    timeout_s = 5
    run_dir = tmp_path / "frozen"
    proc = start_pgt_torchrun(2, train_args(run_dir, "data.train_size=480", "run.checkpoint_every=1",
                                            f"run.dist_timeout_s={timeout_s}", "sched.epochs=3"))
    stopped_pid = None
    try:
        wait_for(run_dir / "last.pth", proc)
        stopped_pid = rank_pids(proc)[1]
        os.kill(stopped_pid, signal.SIGSTOP)
        t0 = time.monotonic()
        result = finish(proc, timeout=timeout_s + 60)
        took = time.monotonic() - t0
    finally:
        if stopped_pid is not None and Path(f"/proc/{stopped_pid}").exists():  # ours: end it whatever happened
            os.kill(stopped_pid, signal.SIGKILL)
            os.kill(stopped_pid, signal.SIGCONT)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("pgt-train: failed: rank 1 (host "), result.stderr
    assert f"pid {stopped_pid}) of 2 went silent" in lines[0] and f"run.dist_timeout_s={timeout_s}" in lines[0]
    assert took < timeout_s + 15, f"the job took {took:.1f} s to end after the freeze"
    assert not Path(f"/proc/{stopped_pid}").exists() or "zombie" in Path(f"/proc/{stopped_pid}/status").read_text()


def test_a_rank_that_ended_with_its_own_line_is_not_blamed_again():
    """lost_rank_line on rank 1 after a failed collective, with a real TCPStore: rank 0 recorded a failing exit (it
    printed its own line, e.g. a lost run lock), so rank 1 says nothing (""), at once; had rank 0 finished cleanly
    (exit 0) the failure is rank 1's own (None, its error is printed); a rank that just stops beating is named."""
    from datetime import timedelta

    from pgt_train import dist
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=5))
    failure = RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed by peer")
    for code, expected in (("2", ""), ("0", None)):
        prefix = torch.distributed.PrefixStore(f"case{code}/", store)
        prefix.set("exit/0", code)
        dist.Heartbeat.current = dist.Heartbeat(prefix, rank=1, world_size=2, interval=0.05, timeout_s=1.0)
        started = time.monotonic()
        assert dist.lost_rank_line(failure) == expected
        assert expected is None or time.monotonic() - started < 0.1  # no wait on the heartbeats
    prefix = torch.distributed.PrefixStore("silent/", store)
    prefix.set("who/0", "host h, pid 7")
    dist.Heartbeat.current = dist.Heartbeat(prefix, rank=1, world_size=2, interval=0.05, timeout_s=1.0)
    assert dist.lost_rank_line(failure).startswith("rank 0 (host h, pid 7) of 2 went silent")
