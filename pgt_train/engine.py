"""The training step and the evaluation loop: train_step and evaluate.

One code path for every mode: autocast and GradScaler are disabled rather than branched around
(fp32 on the CPU), a world of one has no DDP wrapper, accumulation only decides when to step.
Metrics accumulate on the device; nothing here synchronises with the host: the trainer reads the
sums every `run.log_interval` steps and at the end of the epoch, where they are reduced over all ranks.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from timm.utils import dispatch_clip_grad

from pgt_train import calibration
from pgt_train.dist import all_reduce_max, all_reduce_sum
from pgt_train.errors import UserError


class NonFiniteLoss(RuntimeError):
    """The loss stayed NaN/inf too long, or the weights became non-finite; the run must stop."""


@dataclass(frozen=True)
class StepSettings:
    """How one optimizer step is taken; fixed for the whole run."""
    accum_steps: int = 1
    amp_dtype: Optional[torch.dtype] = None  # None: fp32
    clip_mode: str = "none"  # none | norm | value | agc
    clip_value: float = 1.0
    gradient_scale: float = 1.0  # the gradient is this times PGT's: α under pgt.form temperature (clip_gradients)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def clip_parameters(model: torch.nn.Module, mode: str) -> list[torch.nn.Parameter]:
    """AGC leaves the classifier out, as its authors (Brock et al. 2021) and timm's train.py do.

    By get_classifier() rather than timm's model_parameters(exclude_head=True), which drops the last two
    parameter tensors by position whatever they are.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "agc":
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        head_ids = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
        params = [p for p in params if id(p) not in head_ids]
    return params


def clip_gradients(params: list, *, mode: str, value: float, gradient_scale: float = 1.0) -> None:
    """timm's dispatch_clip_grad, except norm clipping of a gradient that is `gradient_scale` times PGT's (the
    temperature twin, whose threshold `value` is α times PGT's too): torch multiplies by M / (‖g‖ + 1e-6), and
    that 1e-6 does not scale with the gradient. So the gradient is divided by the scale, clipped at PGT's
    threshold and multiplied back: α times PGT's clipped gradient, to round-off (docs/fidelity.md)."""
    if mode != "norm" or gradient_scale == 1.0:
        dispatch_clip_grad(params, value, mode=mode)
        return
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_mul_(grads, 1.0 / gradient_scale)
    torch.nn.utils.clip_grad_norm_(params, value / gradient_scale)
    torch._foreach_mul_(grads, gradient_scale)


class EpochTotals:
    """One epoch's running sums on the device, plus its training time and data wait on the host.

    sums = [Σ loss·n over micro-batches with a finite loss, top-1 hits, images, images with a finite loss].
    A mid-epoch checkpoint carries them (summed over ranks) so a resumed epoch's summary row still covers
    the whole epoch. A segment is one uninterrupted stretch of training of the epoch (a resume starts another).
    """

    def __init__(self, device: torch.device, saved: Optional[dict] = None, world_size: int = 1):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)
        self.world_size = world_size
        self.elapsed_s = 0.0  # training wall time of the finished segments
        self.data_wait_s = 0.0  # of it, blocked in the loader's next() (this rank; summed over ranks if saved)
        self.segment_start: Optional[float] = None  # perf_counter() while a segment runs
        if saved:  # rank 0 resumes with every rank's sums; the others start from zero: their sum is the total
            self.sums += saved["sums"].to(device=device, dtype=torch.float64)
            self.elapsed_s = float(saved["elapsed_s"])
            self.data_wait_s = float(saved.get("data_wait_s", 0.0))

    def start_segment(self) -> None:
        self.segment_start = time.perf_counter()

    def end_segment(self) -> None:
        """After the segment's work is done on the device (the caller synchronises CUDA first)."""
        self.elapsed_s += time.perf_counter() - self.segment_start
        self.segment_start = None

    def timed(self, loader: Iterable) -> Iterator:
        """Iterates `loader`, adding the seconds spent blocked in starting it and in its next() to data_wait_s
        (host clock only: no device synchronisation)."""
        start = time.perf_counter()
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.data_wait_s += time.perf_counter() - start
            yield batch
            start = time.perf_counter()

    def _reduced(self) -> list[float]:
        """[*sums, data wait] summed over ranks, in one collective."""
        wait = torch.tensor([self.data_wait_s], device=self.sums.device, dtype=torch.float64)
        return all_reduce_sum(torch.cat([self.sums, wait])).tolist()

    def state_dict(self) -> dict:
        """Summed over ranks (a collective: every rank must call it); the time includes the running segment."""
        *sums, wait = self._reduced()
        running = time.perf_counter() - self.segment_start if self.segment_start is not None else 0.0
        return {"sums": torch.tensor(sums, dtype=torch.float64), "elapsed_s": self.elapsed_s + running,
                "data_wait_s": wait}

    def metrics(self) -> dict:
        """Reduced over ranks (a collective). train_loss is NaN when no micro-batch had a finite loss.
        data_wait_pct: the mean rank's share of training wall time blocked in its loader's next();
        loader_img_per_s: images one rank's loader delivered per second of training wall time (mean over ranks)."""
        loss_sum, correct, count, finite, wait = self._reduced()
        elapsed = max(self.elapsed_s, 1e-9)
        return {"train_loss": loss_sum / finite if finite else float("nan"),
                "train_top1": 100 * correct / max(count, 1), "train_images": int(count),
                "train_nonfinite_images": int(count - finite),
                "train_img_per_s": count / elapsed,  # all ranks' images
                "data_wait_pct": min(100.0, 100 * wait / self.world_size / elapsed),
                "loader_img_per_s": count / self.world_size / elapsed}


def _accumulate(totals: EpochTotals, nonfinite_streak: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor,
                targets: torch.Tensor) -> None:
    """Device-side only: python scalars go in as kernel arguments, no host copies."""
    with torch.no_grad():
        finite = torch.isfinite(loss)
        nonfinite_streak.copy_(torch.where(finite, 0, nonfinite_streak + 1))
        n = targets.shape[0]
        totals.sums[0] += torch.where(finite, loss.detach().double() * n, 0.0)
        totals.sums[1] += (logits.argmax(1) == targets).sum()
        totals.sums[2] += n
        totals.sums[3] += finite.double() * n


def check_nonfinite(nonfinite_streak, limit: int, where: str) -> None:
    """Raises NonFiniteLoss once `limit` consecutive losses were NaN/inf (a tensor costs one host sync)."""
    count = int(nonfinite_streak)
    if count >= limit:
        raise NonFiniteLoss(f"loss was not finite for {count} consecutive micro-batches ({where})")


def train_step(model: torch.nn.Module, batches: Iterator, *, loss_fn: Callable, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, settings: StepSettings, clip_params: list, totals: EpochTotals,
               nonfinite_streak: torch.Tensor) -> None:
    """One optimizer step on the next `settings.accum_steps` micro-batches of `batches`, adding to `totals`.

    nonfinite_streak: 0-dim int64 device tensor, consecutive non-finite losses (the caller keeps it across
    epochs). The scaler skips the update when fp16 gradients overflowed. No host synchronisation.
    """
    for micro in range(settings.accum_steps):
        images, targets = next(batches)
        # DDP all-reduces gradients on every backward unless told not to; only the final micro-batch syncs
        final = micro == settings.accum_steps - 1
        with nullcontext() if final or not hasattr(model, "no_sync") else model.no_sync():
            with autocast(images.device, settings.amp_dtype):
                logits = model(images)
                loss = loss_fn(logits, targets)
            scaler.scale(loss / settings.accum_steps).backward()
        _accumulate(totals, nonfinite_streak, loss, logits, targets)
    if settings.clip_mode != "none":
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        clip_gradients(clip_params, mode=settings.clip_mode, value=settings.clip_value,
                       gradient_scale=settings.gradient_scale)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


# The per-image quantities evaluate() sums, in column order; a new validation metric is one more column here,
# in eval_columns, and its formula in eval_metrics.
EVAL_COLUMNS = ("ce", "top1_hit", "top5_hit", "images", "logit_norm", "logit_sum", "logit_sq_sum", "logit_entries")


def eval_columns(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C) float64 logits, (B,) targets (no padding) -> (B, len(EVAL_COLUMNS)) per-image quantities."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]  # (B, k)
    ones = torch.ones_like(logits[:, 0])
    return torch.stack([
        F.cross_entropy(logits, targets, reduction="none"), hits[:, 0].double(), hits.any(1).double(), ones,
        logits.norm(dim=1), logits.sum(1), logits.square().sum(1), ones * logits.shape[1]], dim=1)


def eval_metrics(sums: dict, logit_max: float) -> dict:
    """The summary's val_* and logit_* columns from the EVAL_COLUMNS sums over every val image."""
    n, entries = max(sums["images"], 1), max(sums["logit_entries"], 1)
    mean = sums["logit_sum"] / entries
    return {
        "val_loss": sums["ce"] / n, "val_top1": 100 * sums["top1_hit"] / n, "val_top5": 100 * sums["top5_hit"] / n,
        "val_images": int(sums["images"]), "logit_norm": sums["logit_norm"] / n, "logit_mean": mean,
        "logit_max": logit_max, "logit_var": sums["logit_sq_sum"] / entries - mean * mean,
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, *, device: torch.device,
             amp_dtype: Optional[torch.dtype] = None, alpha: Optional[float] = None) -> dict:
    """Cross-entropy, top-1/top-5, logit statistics and calibration (pgt_train.calibration: of softmax(z), and of
    softmax(alpha·z) when alpha is given) over every val image exactly once, summed over ranks.

    Targets of -1 are padding (DALI's last batch) and count nowhere. "reliability" holds the per-bin sums
    (calibration.finish) for the reliability diagram.
    """
    model.eval()
    sums = torch.zeros(len(EVAL_COLUMNS), device=device, dtype=torch.float64)
    calib = torch.zeros(calibration.sums_size(alpha), device=device, dtype=torch.float64)
    logit_max = torch.full((1,), -float("inf"), device=device, dtype=torch.float64)
    for images, targets in loader:
        with autocast(device, amp_dtype):
            logits = model(images).double()  # (B, C)
        keep = (targets >= 0).double()  # (B,): masks padding by weight, not by indexing (no host sync)
        targets = targets.clamp_min(0)
        sums += (eval_columns(logits, targets) * keep[:, None]).sum(0)
        calib += calibration.batch_sums(logits, targets, keep, calibration.fit_half(images), alpha)
        logit_max = torch.maximum(logit_max, torch.where(keep[:, None] > 0, logits, -float("inf")).max().view(1))
    reduced = all_reduce_sum(torch.cat([sums, calib]))  # one collective for every sum
    totals = dict(zip(EVAL_COLUMNS, reduced[:len(EVAL_COLUMNS)].tolist()))
    if totals["images"] == 0:  # the same verdict on every rank (summed); a top-1 of 0 would be saved as best
        raise UserError("validation scored no image: every val image was unreadable or skipped (see the warnings "
                        "above), so this epoch has no result; fix or replace data.root/val (nothing of this epoch "
                        "was saved)")
    calibration_metrics, reliability = calibration.finish(reduced[len(EVAL_COLUMNS):], alpha)
    return {**calibration_metrics, "reliability": reliability,
            **eval_metrics(totals, all_reduce_max(logit_max).item())}
