"""Preemption, crash-safe checkpoints, untrusted checkpoints, divergence, export: with real processes and files."""
import os
import signal
import subprocess
import textwrap
import time

import pytest
import torch
from torch import nn

from pgt_train import checkpoint
from pgt_train.checkpoint import CheckpointError
from pgt_train.preempt import EXIT_PREEMPTED
from pgt_train.writers import read_summary
from tests.helpers import finish, run_cli, start_cli, start_python, tiny_run_args

SYNTH = tiny_run_args(None, "model.norm=none", train_size=96)  # 12 steps an epoch


def rows(run_dir):
    return read_summary(run_dir / "summary.csv")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    result = run_cli(*SYNTH, f"run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_exact(straight_run, tmp_path):
    run_dir = tmp_path / "preempted"
    proc = start_cli(*SYNTH, f"run.dir={run_dir}", "run.checkpoint_every=2")
    deadline = time.time() + 120
    while not (run_dir / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the first mid-epoch checkpoint (step 2 of 12) proves training is under way
    proc.send_signal(signal.SIGTERM)
    stopped = finish(proc, timeout=60)
    out, err = stopped.stdout, stopped.stderr
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "SIGTERM: saved" in out and "--resume auto" in out
    state = torch.load(run_dir / "last.pth", weights_only=True)
    assert state["counters"]["epochs_done"] == 0 and 0 < state["counters"]["epoch_steps_done"] < 12, "stopped inside the first epoch"
    resumed = run_cli(*SYNTH, f"run.dir={run_dir}", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(straight_run / "last.pth", weights_only=True)["model"]
    b = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "mid-epoch resume must continue with the same data order"
    assert [r["epoch"] for r in rows(run_dir)] == ["1", "2"]
    assert [r["val_top1"] for r in rows(run_dir)] == [r["val_top1"] for r in rows(straight_run)]


@pytest.mark.slow
def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "last.pth"
    writer = textwrap.dedent(f"""
        import torch
        from pgt_train import checkpoint
        big = {{"model": {{"w": torch.randn(4_000_000)}}}}  # 16 MB: each save takes a while
        i = 0
        while True:
            i += 1
            checkpoint.save({str(target)!r}, {{**big, "i": i}})
    """)
    for delay in (0.3, 0.55, 0.8):
        proc = start_python("-c", writer)
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
        state = checkpoint.load(target)
        assert state["i"] >= 1 and state["model"]["w"].numel() == 4_000_000


def test_full_disk_keeps_previous_checkpoint(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.decode().strip()}")
    try:
        checkpoint.save(mount / "last.pth", {"model": {"w": torch.ones(1000)}})
        with pytest.raises(CheckpointError, match="could not write checkpoint .*previous checkpoint there"):
            checkpoint.save(mount / "last.pth", {"model": {"w": torch.ones(1_000_000)}})  # 4 MB > 1 MB
        assert torch.equal(checkpoint.load(mount / "last.pth")["model"]["w"], torch.ones(1000))
        assert sorted(p.name for p in mount.iterdir()) == ["last.pth"], "no temp file left behind"
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.slow
def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"format": checkpoint.FORMAT, "model": Evil()}, evil)
    result = run_cli(*SYNTH, f"run.dir={tmp_path / 'run'}", "--resume", str(evil))
    assert result.returncode == 2
    assert "refused to load" in result.stderr and "nothing was executed" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    (b"this is not a checkpoint", "not a readable checkpoint"),
    (b"", "not a readable checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(bad)


def test_checkpoint_of_plain_tensors_without_format_tag(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match="not a pgt-train checkpoint"):
        checkpoint.load(path)


@pytest.mark.slow
def test_checkpoint_from_another_model_or_config(straight_run, tmp_path):
    other_model = run_cli(*SYNTH, "model.name=resnet10t", f"run.dir={tmp_path / 'a'}", "--resume",
                          straight_run / "last.pth")
    assert other_model.returncode == 2
    assert "model.name='resnet18' but the config has 'resnet10t'" in other_model.stderr
    other_batch = run_cli(*SYNTH, "data.batch_size=16", f"run.dir={tmp_path / 'b'}", "--resume",
                          straight_run / "last.pth")
    assert other_batch.returncode == 2 and "data.batch_size=8" in other_batch.stderr


def test_weights_of_another_model_name_the_keys():
    small = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match=r"does not fit model .*missing: 2.weight.*shape differs: 0.weight"):
        checkpoint.load_model_weights(small, {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(4)},
                                      source="x.pth", model_name="Sequential")


def test_ddp_and_compile_prefixes_load_into_a_plain_model():
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    compiled_keys = torch.compile(plain).state_dict()  # keys start with _orig_mod.
    assert all(k.startswith("_orig_mod.") for k in compiled_keys)
    ddp_style = {f"module.{k}": v + 1 for k, v in plain.state_dict().items()}
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    checkpoint.load_model_weights(fresh, compiled_keys, source="c", model_name="m")
    assert torch.equal(fresh[0].weight, plain[0].weight)
    checkpoint.load_model_weights(fresh, ddp_style, source="d", model_name="m")
    assert torch.equal(fresh[0].weight, plain[0].weight + 1)


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "diverge"
    # Warmup starts at 4e-4, so step 1 is sane and saved; the LR then climbs towards 1e12 and the loss blows up.
    blown = run_cli(*SYNTH, f"run.dir={run_dir}", "optim.lr=1e12", "run.log_interval=1", "run.max_nonfinite_steps=2",
                    "run.checkpoint_every=1")
    assert blown.returncode == 3, blown.stderr
    # whichever comes first: two NaN losses in a row, or a save that finds non-finite weights
    assert ("loss was not finite for 2 consecutive micro-batches (epoch 1, step" in blown.stderr
            or "optimizer state are not finite at step" in blown.stderr)
    assert "the last good checkpoint is kept" in blown.stderr and "Traceback" not in blown.stderr
    kept = torch.load(run_dir / "last.pth", weights_only=True)
    assert kept["counters"]["steps_done"] >= 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_resume_refuses_an_override_the_saved_optimizer_would_ignore(straight_run, tmp_path):
    result = run_cli(*SYNTH, f"run.dir={tmp_path}", "optim.lr=0.5", "--resume", straight_run / "last.pth")
    assert result.returncode == 2 and "optim.lr=0.02 but the config has 0.5" in result.stderr


@pytest.mark.slow
def test_export_safetensors_loads_in_timm_and_plain(straight_run, tmp_path):
    import timm
    from safetensors.torch import load_file
    out = tmp_path / "model.safetensors"
    result = run_cli("export", straight_run, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.yaml").is_file()
    saved = torch.load(straight_run / "best.pth", weights_only=True)["model"]
    via_timm = timm.create_model("resnet18", pretrained=True, num_classes=4, norm_layer=nn.Identity,
                                 pretrained_cfg_overlay=dict(file=str(out), num_classes=4))
    plain = timm.create_model("resnet18", num_classes=4, norm_layer=nn.Identity)
    plain.load_state_dict(load_file(str(out)))
    for k, v in saved.items():
        assert torch.equal(via_timm.state_dict()[k], v) and torch.equal(plain.state_dict()[k], v)


def test_sigterm_while_the_run_is_still_being_built_checkpoints_after_the_first_step(tmp_path, monkeypatch, capsys):
    """SLURM's warning can arrive before training starts (the ranks were still building under load): it is recorded
    from the moment the run folder is locked, so the run stops after its first step with last.pth, exit 75 (before,
    SIGTERM's default action ended the process with no checkpoint)."""
    from pgt_train import cli, trainer
    real_build = trainer.build_setup

    def build_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal to this process, mid-build
        return real_build(*args, **kwargs)

    monkeypatch.setattr(trainer, "build_setup", build_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    run_dir = tmp_path / "run"
    assert cli.main(tiny_run_args(run_dir, "run.log_interval=1")) == EXIT_PREEMPTED
    assert checkpoint.load(run_dir / "last.pth")["counters"]["steps_done"] == 1
    assert signal.getsignal(signal.SIGTERM) == previous  # handed back when the run ends


POOL_WHILE_A_RUN_BUILDS = """
import multiprocessing, os, signal, time
from pgt_train.preempt import StopRequest
stop = StopRequest()  # as from the run folder's lock on (cli.train), when the demo generator's pool forks
with multiprocessing.get_context("fork").Pool(2) as pool:
    pool.apply_async(time.sleep, (120,))
    time.sleep(1)  # the workers are up, one of them busy: the with's terminate() SIGTERMs them, then joins
os.kill(os.getpid(), signal.SIGTERM)  # the trainer itself still only records it
print("recorded", stop.signum == signal.SIGTERM)
"""


@pytest.mark.slow
def test_a_pool_forked_while_the_run_builds_still_ends_on_terminate():
    """Workers forked while the trainer records SIGTERM die of it as before, so Pool.terminate() returns (it hung
    forever in CI: the demo generator's pool, under load, had workers left to SIGTERM and join)."""
    proc = start_python("-c", POOL_WHILE_A_RUN_BUILDS)
    result = finish(proc, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["recorded", "True"], result.stderr
