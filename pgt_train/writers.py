"""Where metrics go: TensorBoard event files, summary.csv (one row per epoch) and the console. Rank 0 only.

Epochs are counted from 1 in every output: the row of epoch 1 holds the first epoch's metrics.
"""
from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

from pgt_train import calibration

SUMMARY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "val_images",
    "train_img_per_s", "epoch_time_s", "logit_norm", "logit_mean", "logit_max", "logit_var",
    "train_logit_norm", "zeroed_filters", "zeroed_features", "corrupt_images", "train_nonfinite_images",
    "data_wait_pct", "loader_img_per_s", *calibration.COLUMNS,
]
TIMING_COLUMNS = ("train_img_per_s", "epoch_time_s", "data_wait_pct", "loader_img_per_s")  # differ run to run


def read_summary(path: Path) -> list[dict]:
    """summary.csv's rows as dicts of strings; [] when there is no file yet."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_finished(run_dir: Path, epochs: int) -> bool:
    """Epochs count from 1, so a run folder is finished once summary.csv holds the row of epoch == `epochs`
    (sched.epochs); scripts skip such runs rather than start them again."""
    return any(row.get("epoch") == str(epochs) for row in read_summary(Path(run_dir) / "summary.csv"))


class RunWriter:
    """Writes one epoch's metrics everywhere; a no-op on ranks other than 0.

    TensorBoard gets two event folders, one x-axis each: tb/ by epoch (the summary.csv columns) and
    tb/steps/ by optimizer step (diagnostics). After a resume each is purged from its own restart point
    (TensorBoard's purge_step applies to every tag of a file, so one file cannot hold both axes).
    """

    def __init__(self, run_dir: Path, *, enabled: bool, completed_epochs: int = 0, completed_steps: int = 0):
        self.enabled = enabled
        self.summary_path = Path(run_dir) / "summary.csv"
        self.reliability_path = Path(run_dir) / calibration.RELIABILITY_FILE
        self.tb = self.tb_steps = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=completed_epochs + 1)
        self.tb_steps = SummaryWriter(log_dir=str(Path(run_dir) / "tb" / "steps"), purge_step=completed_steps + 1)
        # After a resume, rows of epochs that will be trained again are dropped: one row per epoch, none repeated.
        rows = read_summary(self.summary_path)
        kept = [r for r in rows if str(r.get("epoch", "")).isdigit() and int(r["epoch"]) <= completed_epochs]
        if len(kept) < len(rows):  # rows past the checkpoint, or malformed ones: the file is copied, never lost
            backup = self.summary_path.with_name(f"summary.csv.before-resume-{int(time.time())}")
            shutil.copy2(self.summary_path, backup)
            print(f"warning: {self.summary_path}: {len(rows) - len(kept)} row(s) after epoch {completed_epochs} or "
                  f"without an epoch number are dropped from it; the whole file is kept as {backup.name}")
        self.rows = kept
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict]) -> None:
        """The whole file through a temp file and a rename: a reader (pgt-report) or a kill at any moment sees
        the old file or the new one, never half a row. One writer per run folder (runlock), so one temp name."""
        tmp = self.summary_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.summary_path)

    def epoch(self, metrics: dict) -> None:
        if not self.enabled:
            return
        epoch = metrics["epoch"]
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(_tb_tag(key), value, epoch)
        self.tb.flush()
        if "reliability" in metrics:  # the reliability diagram's bins: the latest epoch's replace the last
            calibration.save_reliability(self.reliability_path, metrics["reliability"], epoch)
        self.rows.append({k: _fmt(metrics.get(k)) for k in SUMMARY_COLUMNS})
        self._rewrite(self.rows)

    def scalars(self, values: dict, step: int) -> None:
        """Step-level scalars (x = optimizer step), in tb/steps/."""
        if self.enabled:
            for key, value in values.items():
                self.tb_steps.add_scalar(key, value, step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self.enabled:
            self.tb_steps.add_histogram(tag, values, step)

    def close(self) -> None:
        for tb in (self.tb, self.tb_steps):
            if tb is not None:
                tb.close()


def _tb_tag(key: str) -> str:
    """Epoch-level tags (x = epoch). Step-level series (diagnostics) use other tags: one x-axis per tag."""
    split, _, name = key.partition("_")
    return f"{split}/{name}" if split in ("train", "val", "logit") and name else f"epoch/{key}"


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']}/{epochs}  lr {m['lr']:.4g}  train loss {m['train_loss']:.4f} "
            f"top1 {m['train_top1']:.2f}  val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f} "
            f"top5 {m['val_top5']:.2f} ({m['val_images']} images)  {m['train_img_per_s']:.0f} img/s "
            f"{m['epoch_time_s']:.0f}s  data wait {m['data_wait_pct']:.0f} %")
