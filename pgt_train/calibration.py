"""Calibration of the validation softmax: NLL, ECE, Brier score, mean confidence and a fitted temperature.

PGT trains softmax(α·z) towards the targets while the deployed model is softmax(z), so its confidence is a
measurement in its own right (docs/what-pgt-is.md). Each function below turns one batch into plain float64
sums, so a whole validation is one vector summed over batches and then over ranks (one all_reduce, each
image counted once as val top-1 is); `finish` turns the reduced vector into named metrics. Images whose
`keep` weight is 0 (DALI's padding) count nowhere.

For probabilities p = softmax(z / T) of an image with label y:
- NLL = -log p_y (at T = 1 this is val_loss);
- Brier = Σ_c (p_c - [c = y])², the multi-class score, summed over classes (0 ... 2);
- confidence = max_c p_c; a hit: argmax_c z_c = y;
- ECE over N_BINS equal-width confidence bins, bin b = min(floor(15·conf), 14):
  ECE = Σ_b |hits_b - Σ conf_b| / N (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Temperature scaling: T* minimises the NLL over a fixed log-spaced grid (TEMPERATURES: 2^(k/16), k = -64..96,
i.e. 1/16 ... 64 in steps of x1.044) on one half of val (the fit half) and is scored on the other (the eval
half). An image's half is decided by its own pixels (`fit_half`), so it does not depend on the world size,
the batch size or the order of the batches.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

# summary.csv's calibration columns (finish's metrics); _alpha: of softmax(α·z), PGT runs only; _tscaled: the
# eval half of val at the temperature val_temp_fit fitted on the other half
COLUMNS = ("val_ece", "val_brier", "val_conf_mean", "val_nll_alpha", "val_ece_alpha", "val_brier_alpha",
           "val_conf_mean_alpha", "val_temp_fit", "val_nll_tscaled", "val_ece_tscaled")
RELIABILITY_FILE = "reliability.npz"  # the last validation's bins, in the run folder
N_BINS = 15
TEMPERATURES = 2.0 ** (torch.arange(-64, 97, dtype=torch.float64) / 16)
POINT = 5 + 3 * N_BINS  # point_sums: nll, brier, conf, hits, images, then per bin: images, conf, hits
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_GRID_CHUNK = 1 << 22  # logits entries (temperatures x images x classes) per chunk of grid_sums


def fit_half(images: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True for the images of the fit half: the parity of the number of set bits in the image's values.
    Integer arithmetic, so exact and the same in any batch, order or world size; every bit counts (a float32 batch
    cast to float64 has zero low mantissa bits, which a sum of bit patterns alone would see as one half)."""
    v = images.detach().view(_INT_OF_SIZE[images.element_size()])
    shift = 4 * images.element_size()
    while shift:  # fold each value onto its lowest bit: bit 0 becomes the parity of all its bits
        v = v ^ (v >> shift)
        shift //= 2
    return (v & 1).sum(dim=tuple(range(1, images.dim())), dtype=torch.int64) % 2 == 0


def image_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per image of softmax(logits), logits (..., B, C) float64: (nll, brier, confidence, hit), each (..., B)."""
    logp = F.log_softmax(logits, dim=-1)
    index = targets.expand(logp.shape[:-1]).unsqueeze(-1)
    nll = -logp.gather(-1, index).squeeze(-1)
    p = logp.exp()
    brier = p.square().sum(-1) - 2 * p.gather(-1, index).squeeze(-1) + 1
    confidence = p.amax(-1)
    hit = (logits.argmax(-1) == targets).double()
    return nll, brier, confidence, hit


def bin_sums(confidence: torch.Tensor, hit: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(..., 3, N_BINS): per confidence bin, the weighted number of images, Σ confidence and Σ hits."""
    # a NaN confidence (non-finite logits) goes to bin 0 rather than an undefined index; its sums stay NaN
    bins = (confidence.nan_to_num(0.0) * N_BINS).floor().clamp(0, N_BINS - 1).long()
    onehot = F.one_hot(bins, N_BINS).double() * weight.unsqueeze(-1)  # (..., B, N_BINS)
    stacked = torch.stack([torch.ones_like(confidence), confidence, hit.expand_as(confidence)], dim=-2)
    return stacked @ onehot  # (..., 3, B) @ (..., B, N_BINS)


def point_sums(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(POINT,) sums for softmax(logits): Σ nll, Σ brier, Σ confidence, Σ hits, images, then bin_sums."""
    nll, brier, confidence, hit = image_stats(logits.double(), targets)
    totals = torch.stack([nll, brier, confidence, hit, torch.ones_like(nll)]) @ keep
    return torch.cat([totals, bin_sums(confidence, hit, keep).flatten()])


def grid_sums(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """Per grid temperature, the NLL sums of the fit and the eval half and the eval half's bin_sums, then the
    two halves' image counts: (G·(2 + 3·N_BINS) + 2,)."""
    z = logits.double()
    w_fit, w_eval = keep * fit.double(), keep * (~fit).double()
    temps = TEMPERATURES.to(z.device)
    chunk = max(1, _GRID_CHUNK // max(z.numel(), 1))
    nll_parts, bin_parts = [], []
    for start in range(0, len(temps), chunk):
        t = temps[start:start + chunk].view(-1, 1, 1)
        nll, _, confidence, hit = image_stats(z / t, targets)  # (g, B)
        nll_parts.append(torch.stack([nll @ w_fit, nll @ w_eval], dim=1))  # (g, 2)
        bin_parts.append(bin_sums(confidence, hit, w_eval).flatten(1))  # (g, 3·N_BINS)
    counts = torch.stack([w_fit.sum(), w_eval.sum()])
    return torch.cat([torch.cat(nll_parts).flatten(), torch.cat(bin_parts).flatten(), counts])


def batch_sums(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, fit: torch.Tensor,
               alpha: Optional[float]) -> torch.Tensor:
    """Everything `finish` needs from one batch: softmax(z), softmax(α·z) when alpha is given, the grid."""
    parts = [point_sums(logits, targets, keep)]
    if alpha is not None:
        parts.append(point_sums(alpha * logits.double(), targets, keep))
    return torch.cat(parts + [grid_sums(logits, targets, keep, fit)])


def sums_size(alpha: Optional[float]) -> int:
    return POINT * (1 if alpha is None else 2) + len(TEMPERATURES) * (2 + 3 * N_BINS) + 2


def ece(bins: np.ndarray) -> float:
    """bins (3, N_BINS) = (images, Σ confidence, Σ hits) per bin."""
    n = bins[0].sum()
    return float(np.abs(bins[2] - bins[1]).sum() / n) if n else float("nan")


def _point_metrics(sums: np.ndarray, suffix: str) -> tuple[dict, np.ndarray]:
    nll, brier, confidence, _, n = sums[:5] / max(sums[4], 1)
    bins = sums[5:].reshape(3, N_BINS)
    out = {f"val_ece{suffix}": ece(bins), f"val_brier{suffix}": brier, f"val_conf_mean{suffix}": confidence}
    if suffix:  # at T = 1 the NLL is val_loss
        out[f"val_nll{suffix}"] = nll
    return {k: float(v) for k, v in out.items()}, bins


def finish(sums: torch.Tensor, alpha: Optional[float]) -> tuple[dict, dict]:
    """(metrics, reliability bins) from the sums of batch_sums over every batch and rank.

    Metrics: val_ece, val_brier, val_conf_mean (softmax(z)); the same and val_nll with suffix _alpha for
    softmax(α·z) when alpha is given; val_temp_fit (T*, fitted on the fit half) and val_nll_tscaled,
    val_ece_tscaled (softmax(z / T*) on the eval half only). Bins: name -> (3, N_BINS) array."""
    s = sums.double().cpu().numpy()
    metrics, bins = _point_metrics(s[:POINT], "")
    reliability = {"z": bins}
    offset = POINT
    if alpha is not None:
        more, reliability["alpha"] = _point_metrics(s[offset:offset + POINT], "_alpha")
        metrics.update(more)
        offset += POINT
    g = len(TEMPERATURES)
    nll = s[offset:offset + 2 * g].reshape(g, 2)
    grid_bins = s[offset + 2 * g:offset + g * (2 + 3 * N_BINS)].reshape(g, 3, N_BINS)
    n_fit, n_eval = s[-2:]
    if n_fit == 0 or n_eval == 0 or not np.isfinite(nll).all():  # one image, or non-finite logits: no fit
        metrics.update(val_temp_fit=float("nan"), val_nll_tscaled=float("nan"), val_ece_tscaled=float("nan"))
        return metrics, reliability
    best = int(np.argmin(nll[:, 0]))
    reliability["tscaled"] = grid_bins[best]
    metrics.update(val_temp_fit=float(TEMPERATURES[best]), val_nll_tscaled=float(nll[best, 1] / n_eval),
                   val_ece_tscaled=ece(grid_bins[best]))
    return metrics, reliability


def save_reliability(path, bins: dict, epoch: int) -> None:
    """The bins of one validation as an npz (the report's reliability diagram), through a temp file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, epoch=np.int64(epoch), **{f"bins_{k}": v for k, v in bins.items()})
    tmp.replace(path)
