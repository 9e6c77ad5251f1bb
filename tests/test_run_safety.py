"""A run never overwrites another, never reports NaN as a number, stops on a poisoned state, says when it is
finished, resumes with whole-epoch rows, and rejects unusable folders and values before building anything.

In-process (pgt_train.cli.main) on the synthetic loader: each run is a second or two on the CPU.
"""
import hashlib
import math
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pgt_train import cli
from pgt_train.writers import read_summary
from tests.helpers import run_python, tiny_run_args

TINY = tiny_run_args(None, "diag.interval=2", "run.log_interval=2", model="resnet10t", train_size=48)  # 6 steps/epoch


def train(run_dir, *extra):
    return cli.main([*TINY, f"run.dir={run_dir}", *map(str, extra)])


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    assert train(run_dir) == 0
    return run_dir


@pytest.mark.slow
def test_a_new_run_never_writes_into_a_folder_holding_a_run(finished_run, capsys):
    before = tree_digest(finished_run)
    assert train(finished_run, "optim.lr=0.03") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "\n" == err[-1] and err.count("\n") == 1
    assert tree_digest(finished_run) == before


@pytest.mark.slow
def test_resume_auto_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, capsys):
    import pgt_train.trainer as trainer_module
    run_dir = tmp_path / "died"
    real_after_step = trainer_module.Trainer._after_step

    def crash_at_2(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_after_step(self, step)
    trainer_module.Trainer._after_step = crash_at_2
    try:
        assert train(run_dir) == 130
    finally:
        trainer_module.Trainer._after_step = real_after_step
    assert (run_dir / "config.yaml").exists() and not (run_dir / "last.pth").exists()
    capsys.readouterr()
    assert train(run_dir) == 2, "without --resume the folder is still another run's"
    assert "--resume auto" in capsys.readouterr().err
    assert train(run_dir, "optim.lr=0.03", "--resume", "auto") == 2, "a different run may not take its place"
    err = capsys.readouterr().err
    assert "no last.pth to continue from" in err and "not the start of this same run" in err
    assert train(run_dir, "--resume", "auto") == 0
    assert [r["epoch"] for r in read_summary(run_dir / "summary.csv")] == ["1", "2"]


def test_resume_auto_on_a_finished_run_says_so_and_writes_nothing(finished_run, capsys):
    before = tree_digest(finished_run)
    assert train(finished_run, "--resume", "auto") == 0
    out = capsys.readouterr().out
    assert "is finished (2/2 epochs); nothing to do" in out and "--init-from" in out
    assert tree_digest(finished_run) == before


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights(finished_run, tmp_path):
    run_dir = tmp_path / "finetune"
    assert train(run_dir, "--init-from", finished_run / "last.pth", "sched.epochs=2", "--run-epochs", "1") == 0
    state = torch.load(run_dir / "last.pth", weights_only=True)
    assert state["config"]["model"]["init_from"] == str(finished_run / "last.pth")
    assert state["counters"]["epochs_done"] == 1 and state["counters"]["steps_done"] == 6, "a new schedule and new counters"
    scratch = tmp_path / "scratch"
    assert train(scratch, "--run-epochs", "1") == 0
    a, b = state["model"], torch.load(scratch / "last.pth", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a), "init_from must change the starting weights"


def test_init_from_a_missing_file_is_one_line(tmp_path, capsys):
    assert train(tmp_path / "r", "--init-from", tmp_path / "nope.pth") == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resumed_epoch_row_covers_the_whole_epoch(finished_run, tmp_path):
    """A crash right after a mid-epoch checkpoint in the second epoch (step 9 = step 3 of 6), then a resume:
    summary rows, the filter-norm series and both TensorBoard axes equal the uninterrupted run's."""
    import numpy as np
    import pgt_train.trainer as trainer_module
    mid = tmp_path / "mid"
    real_after_step = trainer_module.Trainer._after_step

    def crash_at_9(self, step):
        stopped = real_after_step(self, step)
        if step == 9:
            raise KeyboardInterrupt
        return stopped
    trainer_module.Trainer._after_step = crash_at_9
    try:
        assert train(mid, "run.checkpoint_every=3") == 130
    finally:
        trainer_module.Trainer._after_step = real_after_step
    state = torch.load(mid / "last.pth", weights_only=True)
    assert (state["counters"]["epochs_done"], state["counters"]["epoch_steps_done"]) == (1, 3)
    assert train(mid, "--resume", "auto") == 0
    straight, resumed = read_summary(finished_run / "summary.csv"), read_summary(mid / "summary.csv")
    for column in ("train_loss", "train_top1", "val_top1"):
        assert [r[column] for r in resumed] == [r[column] for r in straight], column
    # the filter-norm series lost no step between the last epoch end and the mid-epoch checkpoint
    with np.load(finished_run / "filter_norms.npz") as a, np.load(mid / "filter_norms.npz") as b:
        assert a["step"].tolist() == b["step"].tolist() == [2, 4, 6, 8, 10, 12]
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    # TensorBoard: the resume purges each axis from its own restart point (epoch 2, step 10), no further back
    epochs, steps = EventAccumulator(str(mid / "tb")), EventAccumulator(str(mid / "tb" / "steps"))
    epochs.Reload()
    steps.Reload()
    assert [e.step for e in epochs.Scalars("val/top1")] == [1, 2]
    assert [e.step for e in steps.Scalars("train_step/logit_norm")] == [3, 5, 7, 9, 11]


@pytest.mark.slow
def test_nan_run_exits_3_with_a_finite_checkpoint_even_with_few_steps_per_epoch(tmp_path, capsys):
    run_dir = tmp_path / "nan"
    # 6 steps per epoch < max_nonfinite_steps: the count must carry across epochs, and the weights check
    # must refuse to save a non-finite state at the epoch's end.
    code = train(run_dir, "optim.lr=1e30", "sched.warmup_epochs=0", "sched.epochs=4", "run.max_nonfinite_steps=8",
                 "model.name=resnet18")
    assert code == 3
    err = capsys.readouterr().err
    assert "not finite" in err and "Traceback" not in err
    if (run_dir / "last.pth").exists():
        state = torch.load(run_dir / "last.pth", weights_only=True)
        tensors = list(state["model"].values())
        assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    for row in read_summary(run_dir / "summary.csv"):
        assert row["train_loss"] != "0", "a non-finite epoch is never reported as loss 0"


def test_epoch_with_only_nonfinite_losses_reports_nan_not_zero():
    from pgt_train.engine import EpochTotals
    totals = EpochTotals(torch.device("cpu"))
    totals.sums += torch.tensor([0.0, 1.0, 8.0, 0.0], dtype=torch.float64)  # 8 images, none with a finite loss
    totals.elapsed_s = 1.0
    m = totals.metrics()
    assert math.isnan(m["train_loss"]) and m["train_nonfinite_images"] == 8


def test_state_check_covers_buffers_and_optimizer_state():
    from pgt_train.trainer import state_is_finite
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    assert state_is_finite(model, opt)
    model[1].running_var.fill_(float("inf"))
    assert not state_is_finite(model, opt)
    model[1].running_var.fill_(1.0)
    next(iter(opt.state.values()))["momentum_buffer"].fill_(float("nan"))
    assert not state_is_finite(model, opt)


@pytest.mark.slow
def test_tensorboard_tags_have_one_x_axis(finished_run):
    events = EventAccumulator(str(finished_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/logit_norm")] == [1, 2]  # epochs
    assert "train_step/logit_norm" not in events.Tags()["scalars"]
    events = EventAccumulator(str(finished_run / "tb" / "steps"))
    events.Reload()
    assert "train/logit_norm" not in events.Tags()["scalars"]
    # steps: armed after steps 2, 4, ..., measured on the next step's batch (diag.interval 2)
    assert [e.step for e in events.Scalars("train_step/logit_norm")] == [3, 5, 7, 9, 11]


@pytest.mark.slow
def test_malformed_summary_does_not_block_resume_and_is_kept(tmp_path, capsys):
    run_dir = tmp_path / "malformed"
    assert train(run_dir, "--run-epochs", "1") == 0
    with open(run_dir / "summary.csv", "a") as f:
        f.write("garbage,row\n")
    text = (run_dir / "summary.csv").read_text()
    assert train(run_dir, "--resume", "auto") == 0
    assert [r["epoch"] for r in read_summary(run_dir / "summary.csv")] == ["1", "2"]
    backups = list(run_dir.glob("summary.csv.before-resume-*"))
    assert len(backups) == 1 and backups[0].read_text() == text, "the user's log is copied, never lost"
    assert "kept as" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda d: d.write_text("x"), "is a file"),
    (lambda d: (d.parent / "blocker").write_text("x"), "which is a file"),
])
def test_unusable_run_dir_is_one_line_before_anything_is_built(tmp_path, capsys, make, message):
    target = tmp_path / "run"
    make(target)
    run_dir = target if message == "is a file" else tmp_path / "blocker" / "run"
    assert train(run_dir) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "pgt-train:" not in captured.out  # no banner: nothing was built


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_dir_parent(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        assert train(tmp_path / "run") == 2
    finally:
        tmp_path.chmod(0o700)
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["optim.lr=.inf"], "optim.lr: must be a finite number"),
    (["optim.weight_decay=.nan"], "optim.weight_decay: must be a finite number"),
    (["clip.mode=norm", "clip.value=.inf"], "clip.value: must be a finite number"),
    ([f"seed={2**64}"], "seed: must lie in [0, 2^63)"),
    (["data.batch_size=1", "model.norm=bn"], "1 image per micro-batch"),
    (["run.device=cuda"], "no usable CUDA GPU"),
])
def test_values_that_would_crash_mid_run_are_refused_up_front(tmp_path, capsys, extra, message):
    if "run.device=cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert train(tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_pgt_torchrun_passes_the_ranks_exit_code_and_line(tmp_path):
    result = run_python("-m", "pgt_train.launch", "--nproc_per_node=2", "-m", "pgt_train", *TINY,
                        f"run.dir={tmp_path / 'r'}", "pgt.alpha=2", threads=1, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pgt.alpha: must lie in (0, 1]" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr


def test_a_finished_run_gives_the_signal_handlers_back(finished_run, tmp_path):
    """In-process use (notebooks, tests): after fit() a later multiprocessing pool must still be terminable."""
    import signal
    before = signal.getsignal(signal.SIGTERM)
    assert train(tmp_path / "again") == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_mid_epoch_checkpoint_carries_the_training_time_so_far():
    """img/s of a resumed epoch divides all its images by all its training time, not by the part after it."""
    import time
    from pgt_train.engine import EpochTotals
    totals = EpochTotals(torch.device("cpu"))
    totals.elapsed_s = 2.0  # an earlier segment of this epoch
    totals.segment_start = time.perf_counter() - 3.0  # a segment running for 3 s when the checkpoint is taken
    assert 4.9 < totals.state_dict()["elapsed_s"] < 6.0


def jpeg_args(run_dir, root):
    return tiny_run_args(run_dir, "run.progress=false", root=root, classes=3, model="resnet10t", img_size=32)


def refused_in_one_line(capsys, args, message):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_run_folder_inside_the_data_is_refused_before_anything_is_written(tmp_path, capsys):
    from tests.helpers import make_jpeg_folder
    root = make_jpeg_folder(tmp_path / "data")
    before = tree_digest(root)
    refused_in_one_line(capsys, jpeg_args(root / "runs" / "x", root), "lies inside data.root")
    refused_in_one_line(capsys, jpeg_args(root / "train" / "a_round" / "run", root), "lies inside data.root")
    link = tmp_path / "link"  # the same folder through a symlink
    link.symlink_to(root)
    refused_in_one_line(capsys, jpeg_args(link / "run", root), "lies inside data.root")
    assert tree_digest(root) == before and not (root / "runs").exists()


def test_a_symlinked_class_folder_counts_as_the_data(tmp_path, capsys):
    from tests.helpers import make_jpeg_folder
    root = make_jpeg_folder(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "train" / "a_round").rename(elsewhere / "a_round")
    (root / "train" / "a_round").symlink_to(elsewhere / "a_round")
    refused_in_one_line(capsys, jpeg_args(elsewhere / "a_round" / "run", root), "lies inside data.root")
    refused_in_one_line(capsys, jpeg_args(elsewhere, root), "lies inside run.dir")
    assert not (elsewhere / "a_round" / "run").exists() and not (elsewhere / "config.yaml").exists()


def test_data_inside_the_run_folder_is_refused(tmp_path, capsys):
    from tests.helpers import make_jpeg_folder
    run_dir = tmp_path / "run"
    root = make_jpeg_folder(run_dir / "data")
    before = tree_digest(run_dir)
    refused_in_one_line(capsys, jpeg_args(run_dir, root), "lies inside run.dir")
    assert tree_digest(run_dir) == before


@pytest.mark.parametrize("option", ["--init-from", "--resume"])
def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(tmp_path, capsys, option):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    err = refused_in_one_line(capsys, [*TINY, f"run.dir={tmp_path / 'r'}", option, str(text)],
                              f"{text} is not a readable checkpoint: it is not a file torch.save writes")
    assert "list index" not in err and not (tmp_path / "r").exists()


def test_a_pickle_refusal_is_the_projects_line_only(tmp_path, capsys):
    from pgt_train import checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    evil = tmp_path / "evil.pth"
    torch.save({"format": checkpoint.FORMAT, "model": Evil()}, evil)
    err = refused_in_one_line(capsys, [*TINY, f"run.dir={tmp_path / 'r'}", "--resume", str(evil)],
                              "holds pickled objects (posix.system) that weights_only loading does not allow")
    assert "weights_only` set to `False`" not in err and "Weights only load failed" not in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "r").exists()
