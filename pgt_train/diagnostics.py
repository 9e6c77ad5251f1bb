"""The paper's diagnostics (Figs. 5-8): per-filter norms, zeroed-out filters and features, logit norms.

Every `interval` optimizer steps, rank 0 measures the L2 norm of every conv filter (weights are the
same on all ranks) and arms a hook on the classifier that captures the next training batch's pooled
features (its input) and logits (its output). Scalars and histograms go to TensorBoard; the per-layer
norm series go to <run.dir>/filter_norms.npz for plotting; epoch totals go to summary.csv.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn


def filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) conv weight -> (out,) L2 norm of each filter."""
    return weight.detach().flatten(1).float().norm(dim=1)


def feature_norms(features: torch.Tensor) -> torch.Tensor:
    """(N, F) pooled features -> (F,) RMS of each channel over the batch (0 for a dead channel)."""
    return features.detach().flatten(1).float().norm(dim=0) / features.shape[0] ** 0.5


def histogram(writer, tag: str, values: torch.Tensor, step: int) -> None:
    """TensorBoard refuses a histogram without finite values; a diverged run must still log and stop cleanly."""
    finite = values[torch.isfinite(values)]
    if finite.numel():
        writer.histogram(tag, finite, step)


class Diagnostics:
    def __init__(self, model: nn.Module, *, interval: int, zero_threshold: float, writer, run_dir: Path, log,
                 start_step: int = 0, saved: Optional[dict] = None):
        self.interval, self.threshold, self.writer, self.log = interval, zero_threshold, writer, log
        self.path = Path(run_dir) / "filter_norms.npz"
        self.convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        self.series: dict[str, list] = {"step": []}
        if self.path.is_file() and start_step > 0:  # a resumed run continues the series from its step
            with np.load(self.path) as npz:
                keep = npz["step"] <= start_step
                self.series = {k: list(npz[k][keep]) for k in npz.files}
        self.dead_layers: set[str] = set()
        self.armed, self.captured = False, None
        self.last = {"zeroed_filters": 0, "zeroed_features": 0, "train_logit_norm": float("nan")}
        if saved:  # a resume: the measurements so far and a pending capture continue as if never stopped
            self.load_state_dict(saved)
        head = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(head, nn.Module):
            head.register_forward_hook(self._capture)

    def state_dict(self) -> dict:
        """What a checkpoint carries: the latest totals, whether the next training batch is to be measured, and
        the layers already warned about. Taken after a step's after_step, when nothing captured is pending."""
        return {"last": dict(self.last), "armed": self.armed, "dead_layers": sorted(self.dead_layers)}

    def load_state_dict(self, state: dict) -> None:
        last = state.get("last", {})
        self.last.update({k: type(self.last[k])(last[k]) for k in self.last if k in last})
        self.armed = bool(state.get("armed", False))
        self.dead_layers = set(state.get("dead_layers", ()))

    def _capture(self, module, inputs, output) -> None:
        # a python flag check per forward; tensors are kept only on measuring steps. Training batches only: an
        # evaluation between the arming step and the next step must not be measured in its place.
        if self.armed and module.training:
            self.captured, self.armed = (inputs[0].detach(), output.detach()), False

    def after_step(self, step: int) -> None:
        if self.captured is not None:
            self._record_features(step)
        if step % self.interval == 0:
            self._record_filters(step)
            self.armed = True

    def _record_filters(self, step: int) -> None:
        norms = {name: filter_norms(m.weight).cpu() for name, m in self.convs}  # one host sync
        zeroed = {name: int((n < self.threshold).sum()) for name, n in norms.items()}
        self.series["step"].append(step)
        for name, n in norms.items():
            self.series.setdefault(name, []).append(n.half().numpy())
            histogram(self.writer, f"filter_norm/{name}", n, step)
            self.writer.scalars({f"zeroed_filters/{name}": zeroed[name]}, step)
            if zeroed[name] == n.numel() and name not in self.dead_layers:
                self.dead_layers.add(name)
                self.log(f"warning: every filter of conv layer {name} has zeroed out (L2 norm < {self.threshold}) "
                         f"at step {step}; such filters do not recover (paper Sec. 5.2)")
        self.last["zeroed_filters"] = sum(zeroed.values())
        self.writer.scalars({"zeroed_filters/total": self.last["zeroed_filters"]}, step)

    def _record_features(self, step: int) -> None:
        features, logits = self.captured
        self.captured = None
        f_norms = feature_norms(features).cpu()
        self.last["zeroed_features"] = int((f_norms < self.threshold).sum())
        self.last["train_logit_norm"] = float(logits.float().norm(dim=1).mean())
        histogram(self.writer, "feature_norm/pooled", f_norms, step)
        self.writer.scalars({"zeroed_features/pooled": self.last["zeroed_features"],
                             "train_step/logit_norm": self.last["train_logit_norm"]}, step)  # tb/steps/: x = step

    def write(self) -> None:
        """Rewrites the norm series file (small: float16). Called with every checkpoint, so a resume from any
        checkpoint finds every step up to it in the file."""
        if len(self.series["step"]) > 0:
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, **{k: np.stack(v) if k != "step" else np.asarray(v) for k, v in self.series.items()})
            tmp.replace(self.path)

    def epoch_end(self) -> dict:
        """Latest totals for summary.csv."""
        return dict(self.last)
