"""The training loop's own outputs: the data-wait column and its hint, and the counters a checkpoint carries
(including the "pgt-train/1" files of existing run folders). In-process runs of pgt_train.cli.main on the CPU."""
import time

import pytest
import torch

from pgt_train import checkpoint, cli, data
from pgt_train.counters import Counters
from pgt_train.writers import read_summary
from tests.helpers import tiny_run_args

TINY = tiny_run_args(None, "diag.interval=0", model="resnet10t", train_size=48)  # 6 steps/epoch


class SlowLoader:
    """A real loader whose every batch takes `delay` s more to arrive: an artificially loader-bound run."""

    def __init__(self, loader, delay: float):
        self.loader, self.delay, self.workers = loader, delay, loader.workers

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch, skip_batches=0):
        self.loader.set_epoch(epoch, skip_batches=skip_batches)

    def take_corrupt_count(self):
        return self.loader.take_corrupt_count()


@pytest.mark.slow
def test_a_loader_bound_run_shows_its_data_wait_and_the_hint(tmp_path, monkeypatch, capsys):
    real_build = data.build_loaders

    def slow_train_loader(*args, **kwargs):
        train, val = real_build(*args, **kwargs)
        return SlowLoader(train, delay=0.5), val
    monkeypatch.setattr(data, "build_loaders", slow_train_loader)
    assert cli.main([*TINY, f"run.dir={tmp_path / 'slow'}", "sched.epochs=1", "sched.warmup_epochs=0"]) == 0
    out = capsys.readouterr().out
    (row,) = read_summary(tmp_path / "slow" / "summary.csv")
    assert float(row["data_wait_pct"]) > 50, row
    assert 0 < float(row["loader_img_per_s"]) < 8 / 0.5 * 1.01, "8 images per 0.5 s at most"
    assert "data wait" in out  # the epoch line
    hint = [line for line in out.splitlines() if line.startswith("note: training waited for data")]
    assert len(hint) == 1, out
    assert "img/s" in hint[0] and "data.workers" in hint[0] and "nvjpeg" in hint[0] and "dali" in hint[0]


@pytest.mark.slow
def test_a_fast_loader_waits_little_and_gets_no_hint(tmp_path, capsys):
    args = tiny_run_args(tmp_path / "fast", "diag.interval=0", "sched.epochs=1", "sched.warmup_epochs=0",
                         model="resnet18", img_size=32, batch=16, train_size=128)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    (row,) = read_summary(tmp_path / "fast" / "summary.csv")
    assert float(row["data_wait_pct"]) < 10, row
    assert float(row["loader_img_per_s"]) > 0
    assert "waited for data" not in out and "data wait" in out


def counters_v1(state: dict) -> dict:
    """`state` as a "pgt-train/1" file holds it: flat counters, batches_done in micro-batches."""
    c = state.pop("counters")
    accum = state["config"]["data"]["accum_steps"]
    return {**state, "format": checkpoint.FORMAT_V1, "epoch": c["epochs_done"], "step": c["steps_done"],
            "batches_done": c["epoch_steps_done"] * accum, "best_top1": c["best_top1"], "best_epoch": c["best_epoch"]}


@pytest.fixture
def mid_epoch_v1(tmp_path, monkeypatch):
    """A run killed right after its mid-epoch save at step 9 (epoch 2, 3 of 6 steps done), its last.pth rewritten
    in the old format."""
    from pgt_train.trainer import Trainer
    run_dir, real_after_step = tmp_path / "run", Trainer._after_step

    def crash_at_9(self, step):
        stopped = real_after_step(self, step)
        if step == 9:
            raise KeyboardInterrupt
        return stopped
    monkeypatch.setattr(Trainer, "_after_step", crash_at_9)
    assert cli.main([*TINY, f"run.dir={run_dir}", "run.checkpoint_every=3"]) == 130
    monkeypatch.undo()
    state = torch.load(run_dir / "last.pth", weights_only=True)
    assert Counters.from_state_dict(state["counters"]) == Counters(1, 9, 3, state["counters"]["best_top1"], 1)
    torch.save(counters_v1(state), run_dir / "last.pth")
    return run_dir


def test_a_run_folder_of_the_previous_checkpoint_format_resumes(mid_epoch_v1, capsys):
    assert checkpoint.load(mid_epoch_v1 / "last.pth")["counters"]["epochs_done"] == 1
    assert cli.main([*TINY, f"run.dir={mid_epoch_v1}", "--resume", "auto"]) == 0
    assert [r["epoch"] for r in read_summary(mid_epoch_v1 / "summary.csv")] == ["1", "2"]
    counters = torch.load(mid_epoch_v1 / "last.pth", weights_only=True)["counters"]
    assert (counters["epochs_done"], counters["steps_done"]) == (2, 12)


def test_an_old_checkpoint_with_a_partial_step_is_refused_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main([*TINY, f"run.dir={run_dir}", "--run-epochs", "1"]) == 0
    state = counters_v1(torch.load(run_dir / "last.pth", weights_only=True))
    state["config"]["data"]["accum_steps"] = 2
    state["batches_done"] = 3  # 1.5 optimizer steps of 2 micro-batches
    torch.save(state, tmp_path / "old.pth")
    capsys.readouterr()
    assert cli.main([*TINY, f"run.dir={tmp_path / 'new'}", "--resume", str(tmp_path / "old.pth")]) == 2
    err = capsys.readouterr().err
    assert "epoch_steps_done=1.5 is not an integer" in err and err.count("\n") == 1, err
    assert not (tmp_path / "new").exists()


def test_counters_keep_one_convention():
    c = Counters()
    for _ in range(3):
        c.count_step()
    assert (c.steps_done, c.epoch_steps_done, c.skip_batches(accum_steps=4), c.steps_left(5)) == (3, 3, 12, 2)
    assert c.misfit(steps_per_epoch=5) is None and c.misfit(steps_per_epoch=3) is not None
    assert c.count_epoch(val_top1=40.0) and (c.epochs_done, c.epoch_steps_done, c.best_epoch) == (1, 0, 1)
    assert not c.count_epoch(val_top1=float("nan")) and c.best_top1 == 40.0
    assert Counters.from_state_dict(c.state_dict()) == c


def test_pgt_train_reaches_the_optimizer_step_in_four_calls(tmp_path):
    """cli.main -> cli.train -> Trainer.fit -> engine.train_step, and no pgt_train frame between them (no callback
    that reaches back up): read off the stack at every real optimizer step of a real run."""
    import inspect

    from torch.optim.optimizer import register_optimizer_step_pre_hook
    chains = []

    def record(optimizer, args, kwargs):
        frames = [f for f in inspect.stack() if "/pgt_train/" in f.filename]
        chains.append([f"{f.filename.rsplit('/', 1)[1]}:{f.function}" for f in reversed(frames)])
    handle = register_optimizer_step_pre_hook(record)
    try:
        assert cli.main([*TINY, f"run.dir={tmp_path / 'run'}", "sched.epochs=1", "sched.warmup_epochs=0"]) == 0
    finally:
        handle.remove()
    assert len(chains) == 6
    assert all(c == ["cli.py:main", "cli.py:train", "trainer.py:fit", "engine.py:train_step"] for c in chains), chains
