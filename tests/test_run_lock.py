"""One writer per run folder, a best.pth that survives a kill, and resume state that is checked, not trusted
(issue 19): real pgt-train processes racing on one run.dir, real SIGKILLs at controlled points, real files."""
import os
import shutil
import signal
import sys
import textwrap
import time

import pytest
import torch

from pgt_train import checkpoint, cli, runlock
from pgt_train.writers import TIMING_COLUMNS, read_summary
from tests.helpers import REPO, finish, python_env, run_python, start_cli, start_python, tiny_run_args

TINY = tiny_run_args(None, "diag.interval=2", "run.log_interval=2", model="resnet10t", train_size=48)  # 6 steps/epoch

# pgt-train with checkpoint.save wrapped: SIGKILL (no handler, no cleanup) right before or right after the save
# of NAME at global STEP. argv: NAME STEP before|after <pgt-train argv>
KILL_AT_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pgt_train import checkpoint, cli
    name, step, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real = checkpoint.save
    def save(path, state):
        hit = path.name == name and state["counters"]["steps_done"] == step
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, state)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save = save
    sys.exit(cli.main(sys.argv[4:]))
""")


def killed_run(name, step, when, *args):
    result = run_python("-c", KILL_AT_SAVE, name, step, when, *args, timeout=180)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result


def wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert predicate(), "the first process never got going"


@pytest.mark.slow
def test_a_second_writer_exits_2_naming_the_holder_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = start_cli(*TINY, f"run.dir={run_dir}", "sched.epochs=500", "optim.lr=0.03")  # stopped below
    wait_for(lambda: (run_dir / "config.yaml").exists(), first)  # it holds the lock and is building/training
    for extra in (["optim.lr=0.05"], ["optim.lr=0.03", "--resume", "auto"]):  # a new run, and a resume
        t0 = time.time()
        second = finish(start_cli(*TINY, f"run.dir={run_dir}", "sched.epochs=500", *extra), timeout=120)
        if first.poll() is not None:
            pytest.skip("the first run ended before the second started (machine too fast for this race)")
        assert second.returncode == 2, second.stderr
        assert f"is in use: PID {first.pid} is writing there" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert "pgt-train:" not in second.stdout, "refused before anything was built"
        assert time.time() - t0 < 60
    first.send_signal(signal.SIGTERM)
    done = finish(first, timeout=120)
    assert done.returncode == 75, done.stderr
    epochs = [r["epoch"] for r in read_summary(run_dir / "summary.csv")]
    assert epochs == [str(i) for i in range(1, len(epochs) + 1)], "each row once, in order"
    assert "lr: 0.03" in (run_dir / "config.yaml").read_text()


# Another writer's lock file put in place atomically: a file it locked, renamed over the path. argv: PATH
LOCKED_REPLACEMENT = textwrap.dedent("""
    import fcntl, os, sys, time
    path = sys.argv[1]
    fd = os.open(path + ".new", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.replace(path + ".new", path)
    print("held", flush=True)
    time.sleep(120)
""")


def assert_each_epoch_once(run_dir):
    epochs = [r["epoch"] for r in read_summary(run_dir / "summary.csv")]
    assert epochs == [str(i) for i in range(1, len(epochs) + 1)], f"each row once, in order: {epochs}"
    return len(epochs)


@pytest.mark.slow
def test_a_removed_lock_file_still_lets_only_one_writer_train(tmp_path):
    """rm .pgt-train.lock under a live run, then a second writer with --resume auto: it locked a new file at the
    path while the first kept training on the removed one, and both wrote the same epochs. Now exactly one of
    them trains on: the first locks the path again (the second is refused), or notices the second's lock and
    stops writing."""
    run_dir = tmp_path / "run"
    args = (*TINY, f"run.dir={run_dir}", "sched.epochs=500")
    first = start_cli(*args)  # stopped below
    wait_for(lambda: (run_dir / "last.pth").exists(), first)  # an epoch done: the second can resume from it
    (run_dir / runlock.LOCK_NAME).unlink()
    second = start_cli(*args, "--resume", "auto")
    procs = {"first": first, "second": second}
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs.values()) and time.time() < deadline:
            time.sleep(0.1)
        ended = [name for name, p in procs.items() if p.poll() is not None]
        assert len(ended) == 1, f"exactly one of the two stops; ended: {ended}"
        (survivor,) = [p for name, p in procs.items() if name not in ended]
        loser = finish(procs[ended[0]], timeout=60)
        assert loser.returncode == 2, loser.stderr
        assert loser.stderr.count("\n") == 1 and "Traceback" not in loser.stderr
        assert (f"is in use: PID {first.pid} is writing there" in loser.stderr if ended == ["second"] else
                f"was removed or replaced and PID {second.pid} now writes there" in loser.stderr), loser.stderr
        rows = assert_each_epoch_once(run_dir)
        wait_for(lambda: len(read_summary(run_dir / "summary.csv")) >= rows + 2, survivor)  # it trains on
    finally:
        for proc in procs.values():  # the processes this test started, by PID
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    done = finish(survivor, timeout=120)
    assert done.returncode == 75, done.stderr
    assert_each_epoch_once(run_dir)


@pytest.mark.slow
def test_a_replaced_lock_file_is_locked_again_or_stops_the_run(tmp_path):
    """A fresh file moved over the lock file: the running writer locks it again and a second writer is refused,
    naming it. Then another process's locked file moved over it: the running writer stops, exit 2, one line."""
    run_dir = tmp_path / "run"
    lock = run_dir / runlock.LOCK_NAME
    first = start_cli(*TINY, f"run.dir={run_dir}", "sched.epochs=500")
    holder = None
    try:
        wait_for(lambda: lock.exists() and runlock.holder_pid(lock) == first.pid, first)
        (run_dir / "fresh").write_text("")
        os.replace(run_dir / "fresh", lock)
        wait_for(lambda: runlock.holder_pid(lock) == first.pid, first)  # the new file, locked again
        with pytest.raises(cli.UserError, match=f"is in use: PID {first.pid} is writing there"):
            with runlock.RunLock(run_dir):
                pass
        holder = start_python("-c", LOCKED_REPLACEMENT, lock)
        assert holder.stdout.readline().strip() == "held"
        done = finish(first, timeout=120)
    finally:
        for proc in (first, holder):  # the processes this test started, by PID
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert done.returncode == 2, done.stderr
    assert f"locked it again" in done.stdout
    assert done.stderr == (f"pgt-train: error: run.dir {run_dir}: its {runlock.LOCK_NAME} was removed or replaced "
                           f"and PID {holder.pid} now writes there; this run stops without writing more (its last "
                           f"checkpoint is kept)\n")
    assert_each_epoch_once(run_dir)


def test_verify_locks_a_removed_lock_file_again(tmp_path):
    with runlock.RunLock(tmp_path / "r") as lock:
        assert lock.verify() is None
        lock.path.unlink()
        assert "was removed or replaced" in lock.verify()
        assert runlock.holder_pid(lock.path) == os.getpid() and lock.verify() is None
        shutil.rmtree(lock.run_dir)
        with pytest.raises(cli.UserError, match="was removed while this run wrote there"):
            lock.verify()


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    """A real process holds the lock; the kernel names it in /proc/locks; after SIGKILL the lock is free."""
    holder = start_python("-c", f"from pgt_train import runlock; import time\n"
                                f"with runlock.RunLock({str(tmp_path / 'r')!r}):\n"
                                f"    print('held', flush=True); time.sleep(60)")
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(cli.UserError, match=f"PID {holder.pid} is writing there"):
            with runlock.RunLock(tmp_path / "r"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with runlock.RunLock(tmp_path / "r") as lock:  # no stale lock after SIGKILL
        assert lock.fd is not None


def test_a_forked_child_does_not_keep_the_lock_after_its_parent_is_killed(tmp_path):
    """Loader workers are forked from the trainer: after a SIGKILL of the trainer its lock must be free at once,
    while a forked child still lives (a flock is shared with the child and was held until the worker exited)."""
    holder = start_python("-c", f"import os, time\nfrom pgt_train import runlock\n"
                                f"with runlock.RunLock({str(tmp_path / 'r')!r}):\n"
                                f"    child = os.fork()\n"
                                f"    if child == 0: time.sleep(60); os._exit(0)\n"
                                f"    print(child, flush=True); time.sleep(60)")
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        assert os.path.exists(f"/proc/{child}")  # the forked child lives on
        with runlock.RunLock(tmp_path / "r") as lock:
            assert lock.fd is not None
    finally:
        os.kill(child, signal.SIGKILL)  # the child this test's process started (by PID)


def test_a_refused_new_run_leaves_no_folder(tmp_path, capsys):
    assert cli.main([*TINY, f"run.dir={tmp_path / 'a' / 'b'}", "--init-from", str(tmp_path / "nope.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_sigkill_between_last_and_best_is_repaired_by_the_resume(tmp_path):
    """Epoch 1 is always the best so far: a kill right before its best.pth write leaves last.pth at epoch 1 and no
    best.pth (on the old order the resume then said 'finished' and export had nothing, or an older best)."""
    run_dir = tmp_path / "run"
    one = ("sched.epochs=1", "sched.warmup_epochs=0")
    killed_run("best.pth", 6, "before", *TINY, f"run.dir={run_dir}", *one)
    assert (run_dir / "last.pth").exists() and not (run_dir / "best.pth").exists()
    resumed = run_python("-m", "pgt_train", *TINY, f"run.dir={run_dir}", *one, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"repaired {run_dir / 'best.pth'}: it is missing" in resumed.stdout
    assert "is finished" in resumed.stdout
    last, best = (torch.load(run_dir / n, weights_only=True) for n in ("last.pth", "best.pth"))
    best_counters, last_counters = best["counters"], last["counters"]
    assert best_counters["epochs_done"] == last_counters["best_epoch"] == 1
    assert best_counters["best_top1"] == last_counters["best_top1"]
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    exported = run_python("-m", "pgt_train", "export", run_dir, "--out", tmp_path / "m.safetensors")
    assert exported.returncode == 0 and "from best.pth: epoch 1, val top-1" in exported.stdout, exported.stdout


def test_a_stale_best_is_named_and_tracking_continues_from_it(tmp_path):
    """Weights of the recorded best epoch gone (last.pth moved on): best.pth is kept, the run's best lowered to it."""
    def state(epoch, best_top1, best_epoch, steps_done_in_epoch=0):
        counters = {"epochs_done": epoch, "steps_done": 6 * epoch + steps_done_in_epoch,
                    "epoch_steps_done": steps_done_in_epoch, "best_top1": best_top1, "best_epoch": best_epoch}
        return {"model": {"w": torch.zeros(1)}, "counters": counters}
    checkpoint.save(tmp_path / "best.pth", state(2, 60.0, 2))
    fixed, note = checkpoint.reconcile_best(tmp_path, state(4, 75.0, 3, steps_done_in_epoch=2))
    assert "holds epoch 2 (val top-1 60.00)" in note and "whose weights are gone" in note
    assert fixed["counters"]["best_top1"] == 60.0 and fixed["counters"]["best_epoch"] == 2
    assert checkpoint.reconcile_best(tmp_path, state(4, 60.0, 2))[1] is None, "consistent: nothing to say"


def test_the_next_save_removes_only_its_own_dead_temp_files(tmp_path):
    dead = [tmp_path / ".last.pth.k3j_9xq2.tmp", tmp_path / ".last.pth.a1b2c3d4.tmp"]
    others = [tmp_path / ".best.pth.a1b2c3d4.tmp", tmp_path / ".model.safetensors.a1b2c3d4.tmp",
              tmp_path / ".last.pth.mine.tmp", tmp_path / "last.pth.a1b2c3d4.tmp", tmp_path / "notes.tmp"]
    for path in dead + others:
        path.write_bytes(b"x" * 1000)
    checkpoint.save(tmp_path / "last.pth", {"model": {"w": torch.ones(2)}})
    assert not any(p.exists() for p in dead) and all(p.exists() for p in others)


@pytest.mark.slow
def test_mid_epoch_resume_with_another_accum_steps_trains_each_image_once(tmp_path):
    """Killed after the mid-epoch save at step 9 (epoch 2, 3 of 6 steps done), resumed with data.accum_steps=2:
    the same images as the uninterrupted run (weights equal up to float order), 12 steps in all, not more."""
    args = (*TINY, "model.norm=none", "run.checkpoint_every=3")
    straight, mid = tmp_path / "straight", tmp_path / "mid"
    assert run_python("-m", "pgt_train", *args, f"run.dir={straight}").returncode == 0
    killed_run("last.pth", 9, "after", *args, f"run.dir={mid}")
    resumed = run_python("-m", "pgt_train", *args, "data.accum_steps=2", f"run.dir={mid}", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    a, b = (torch.load(d / "last.pth", weights_only=True) for d in (straight, mid))
    assert a["counters"]["steps_done"] == b["counters"]["steps_done"] == 12
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=2e-4, rtol=1e-3), k
    rows = read_summary(mid / "summary.csv")
    assert [r["train_loss"][:4] for r in rows] == [r["train_loss"][:4] for r in read_summary(straight / "summary.csv")]


@pytest.mark.slow
def test_resumed_row_equals_the_uninterrupted_one_column_by_column(tmp_path):
    """Killed right after the save at step 10 (epoch 2; diagnostics armed for step 11's batch): the resumed row,
    diagnostics columns included, equals the uninterrupted run's; so does the tb/steps series."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = (*TINY, "run.checkpoint_every=5")
    straight, mid = tmp_path / "straight", tmp_path / "mid"
    assert run_python("-m", "pgt_train", *args, f"run.dir={straight}").returncode == 0
    killed_run("last.pth", 10, "after", *args, f"run.dir={mid}")
    assert run_python("-m", "pgt_train", *args, f"run.dir={mid}", "--resume", "auto").returncode == 0
    a, b = read_summary(straight / "summary.csv"), read_summary(mid / "summary.csv")
    assert len(a) == len(b) == 2
    for column in a[0]:
        if column not in TIMING_COLUMNS:
            assert [r[column] for r in b] == [r[column] for r in a], column
    assert b[1]["train_logit_norm"] != "nan"
    for run in (straight, mid):
        steps = EventAccumulator(str(run / "tb" / "steps"))
        steps.Reload()
        assert [e.step for e in steps.Scalars("train_step/logit_norm")] == [3, 5, 7, 9, 11], run


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one") / "run"
    assert cli.main([*TINY, f"run.dir={run_dir}", "--run-epochs", "1"]) == 0
    return run_dir


@pytest.mark.parametrize("tamper, message", [
    (lambda s: s["counters"].update(epoch_steps_done=1000), "do not fit this run's 6 steps per epoch"),
    (lambda s: s["counters"].update(epochs_done=-5), "epochs_done=-5 lies outside [0, 2]"),
    (lambda s: s["config"]["pgt"].update(alpha=7.0), "the config saved in it is not valid (pgt.alpha"),
    (lambda s: s["counters"].update(best_top1=250.0), "best_top1=250.0 is neither -1"),
    (lambda s: s.pop("model"), "lacks model, which a resume needs"),
])
def test_tampered_resume_state_exits_2_before_anything_is_written(one_epoch, tmp_path, capsys, tamper, message):
    state = torch.load(one_epoch / "last.pth", weights_only=True)
    tamper(state)
    torch.save(state, tmp_path / "bad.pth")
    assert cli.main([*TINY, f"run.dir={tmp_path / 'new'}", "--resume", str(tmp_path / "bad.pth")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


def test_weights_without_model_or_a_truncated_safetensors_exit_2(one_epoch, tmp_path, capsys):
    state = torch.load(one_epoch / "last.pth", weights_only=True)
    del state["model"]
    torch.save(state, tmp_path / "nomodel.pth")
    assert cli.main([*TINY, f"run.dir={tmp_path / 'a'}", "--init-from", str(tmp_path / "nomodel.pth")]) == 2
    assert "lacks model" in capsys.readouterr().err
    assert cli.main(["export", str(one_epoch), "--out", str(tmp_path / "m.safetensors")]) == 0
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert cli.main([*TINY, f"run.dir={tmp_path / 'b'}", "--init-from", str(tmp_path / "cut.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is not a readable safetensors file" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_summary_lr_is_the_lr_the_epoch_trained_at(tmp_path):
    """Epoch-held schedule, 1 warmup epoch: epoch 1 trains at warmup_lr, epoch 2 at the peak; the row said the
    next epoch's LR (read after the epoch's last scheduler update)."""
    run_dir = tmp_path / "held"
    assert cli.main([*TINY, f"run.dir={run_dir}", "sched.update=epoch", "sched.warmup_lr=0.001"]) == 0
    lrs = [float(r["lr"]) for r in read_summary(run_dir / "summary.csv")]
    assert lrs == [pytest.approx(0.001), pytest.approx(0.02)]
