"""pgt-report's figures (matplotlib, the `report` extra): one function per figure, each returns the Plot records it
made, or one saying why it skipped. Only pgt_train.report.cli imports this module, when it draws, so the tables
need no matplotlib; this module depends on the data model (model, stats), never the reverse."""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import torch
# The object API (no pyplot): no global figure state, no GUI backend; savefig renders PNGs with Agg.
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from pgt_train import calibration
from pgt_train.pgt import power_softmax
from pgt_train.report.model import (IGNORED_AGAINST_BASELINES, Group, Plot, Run, alpha_value, clip_text,
                                    identity_key)
from pgt_train.report.stats import final, mean_std

MAX_FILTER_RUNS = 4  # three layers each: at most 12 filter-norm files
EXAMPLE_LOGITS = (1.2, -0.4, 3.1, 0.3, -1.5, 2.2, 0.0, -0.8, 4.0, 0.9)  # an arbitrary C = 10 example for Fig. 2
TRANSFORM_ALPHAS = (1.0, 0.75, 0.5, 0.25, 0.05)
COLOURS = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors


def draw_all(groups: list[Group], *, out: Path) -> list[Plot]:
    return [*plot_curves(groups, out=out), *plot_filter_norms(groups, out=out),
            *plot_loss_logit_vs_alpha(groups, out=out), *plot_accuracy_vs_alpha(groups, out=out),
            *plot_transform_effect(out=out), *plot_zeroed(groups, out=out),
            *plot_reliability(groups, out=out)]


def colour(i: int):
    return COLOURS[i % len(COLOURS)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def describe(settings: dict) -> str:
    """A short legend name for an α sweep: the settings the table shows, without α."""
    s, clip = settings, clip_text(settings)
    ls = f" ls {s['loss.label_smoothing']:g}" if s["loss.label_smoothing"] else ""
    return (f"{s['model.name']}{' (no BN)' if s['model.norm'] == 'none' else ''} {s['sched.name']} "
            f"b{s['data.batch_size']} lr {s['optim.lr']:g}{ls}{' ' + clip if clip else ''} {s['sched.epochs']} ep")


def mean_curve(group: Group, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, mean over seeds) over the epochs every seed has recorded: matched by epoch number, since a run
    continued from another folder's checkpoint starts past epoch 1 (runs.check_epochs: each epoch once, in order)."""
    epochs = functools.reduce(np.intersect1d, [r.columns["epoch"] for r in group.runs])
    return epochs, np.mean([r.columns[column][np.isin(r.columns["epoch"], epochs)] for r in group.runs], axis=0)


def log_axes(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log", nonpositive="mask")  # 0 % accuracy early on has no place on a log axis
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not 10^x, and some minor ticks labelled: accuracies span
        # less than a decade; the thresholds thin the minor labels out on axes that span more
        axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.tick_params(which="both", labelleft=True, labelsize="small")  # shared y: label both panels anyway


def plot_curves(groups: list[Group], *, out: Path) -> list[Plot]:
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for i, group in enumerate(groups):
        for ax, column in zip(axes, ("train_top1", "val_top1")):
            ax.plot(*mean_curve(group, column), color=colour(i), marker=".", markersize=4, label=group.label)
    for ax, title in zip(axes, ("train", "test (validation)")):
        log_axes(ax)
        ax.set(title=f"{title} top-1", xlabel="epoch", ylabel="top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out / "curves.png", dpi=110)
    return [Plot("curves.png", "Train and test top-1 per epoch on log-log axes, mean over seeds (paper Fig. 4).")]


def filter_norm_layers(names: list[str]) -> list[str]:
    """First, middle and last conv; for ResNet-18 the middle one is conv #11, the layer of the paper's Fig. 5(a)."""
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def plot_filter_norm_layer(step: np.ndarray, norms: np.ndarray, *, title: str, threshold: float, path: Path) -> None:
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    # A random colour per filter, as the paper's Figs. 14-17; seeded so that a rerun draws the same picture.
    ax.set_prop_cycle(color=list(np.random.default_rng(0).random((norms.shape[1], 3)) * 0.85))
    ax.plot(step, norms.astype(np.float32), linewidth=0.5)
    ax.axhline(threshold, color="k", linestyle=":", linewidth=0.8)
    zeroed = int((norms[-1] < threshold).sum())
    ax.set(title=f"{title}\n{norms.shape[1]} filters, {zeroed} zeroed out at the end (norm < {threshold:g}, dotted)",
           xlabel="optimizer step", ylabel="filter L2 norm")
    ax.title.set_fontsize("small")
    fig.savefig(path, dpi=110)


def run_with_filter_norms(group: Group) -> Run | None:
    return next((r for r in group.runs if (r.path / "filter_norms.npz").is_file()), None)


def plot_filter_norms(groups: list[Group], *, out: Path) -> list[Plot]:
    # One run per group (a seed is enough to see zeroing out), the first groups in table order.
    with_norms = [(g, r) for g in groups if (r := run_with_filter_norms(g))][:MAX_FILTER_RUNS]
    if not with_norms:
        return [Plot("filter_norms_*.png", "Per-filter norms (paper Figs. 5-7)",
                     skipped="no run has filter_norms.npz (diagnostics off: diag.interval 0)")]
    plots = []
    for group, run in with_norms:
        with np.load(run.path / "filter_norms.npz") as saved:
            names = [k for k in saved.files if k != "step"]
            for name in filter_norm_layers(names):
                file = f"filter_norms_{slug(group.label)}_{slug(name)}.png"
                title = f"{group.label}: {name} (conv #{names.index(name) + 1} of {len(names)})"
                plot_filter_norm_layer(saved["step"], saved[name], title=title,
                                       threshold=run.settings["diag.zero_threshold"], path=out / file)
                plots.append(Plot(file, f"Norm of every filter of {name} vs step, one line per filter, "
                                        f"run {group.label} (paper Figs. 5-7, 14-17)."))
    return plots


def alpha_families(groups: list[Group]) -> list[list[Group]]:
    """α sweeps: groups equal in every defining setting but seed and α (the baseline, PGT off, joins each sweep of
    its settings, whatever pgt.impl the sweep used), for sweeps with at least two α values."""
    def key(g: Group) -> tuple:
        return identity_key(g.settings, ignore=IGNORED_AGAINST_BASELINES)

    sweeps: dict[tuple, list[Group]] = {}
    for group in groups:
        if group.settings["pgt.alpha"] is not None:
            sweeps.setdefault((key(group), group.settings["pgt.impl"]), []).append(group)
    families = []
    for (settings, _), members in sweeps.items():
        family = members + [g for g in groups if g.settings["pgt.alpha"] is None and key(g) == settings]
        if len({alpha_value(g.settings) for g in family}) > 1:
            families.append(sorted(family, key=lambda g: alpha_value(g.settings)))
    return families


def plot_series(ax, family: list[Group], column: str, *, color: tuple, label: str) -> None:
    """Mean ± std over seeds of a final value against α."""
    stats = [mean_std([final(r, column) for r in g.runs]) for g in family]
    ax.errorbar([alpha_value(g.settings) for g in family], [m for m, _ in stats],
                yerr=[0.0 if math.isnan(s) else s for _, s in stats], color=color, marker="o", capsize=3,
                label=label)


def plot_loss_logit_vs_alpha(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "loss_logit_vs_alpha.png", ("Final mean val logit norm and val cross-entropy against α "
                                                "(α off at 1), and loss against logit norm with a linear fit "
                                                "(paper Fig. 8a-c).")
    families = [f for f in alpha_families(groups)
                if all(not math.isnan(final(r, "logit_norm")) for g in f for r in g.runs)]
    if not families:
        return [Plot(file, caption, skipped="needs runs that differ only in α (two values or more) with logit_norm "
                                            "in summary.csv")]
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_norm, ax_loss, ax_fit = fig.subplots(1, 3)
    for i, family in enumerate(families):
        label = describe(family[0].settings)
        plot_series(ax_norm, family, "logit_norm", color=colour(i), label=label)
        plot_series(ax_loss, family, "val_loss", color=colour(i), label=label)
        runs = [r for g in family for r in g.runs]
        x, y = np.array([final(r, "logit_norm") for r in runs]), np.array([final(r, "val_loss") for r in runs])
        ax_fit.scatter(x, y, color=colour(i))
        if len(set(x)) > 1:  # a line needs two distinct logit norms
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax_fit.plot(xs, slope * xs + intercept, color=colour(i), label=f"{slope:.4g}x + {intercept:.4g}")
    ax_norm.set(title="(a) logit norm vs α", xlabel="α (off = 1)", ylabel="mean L2 norm of val logits")
    ax_loss.set(title="(b) final loss vs α", xlabel="α (off = 1)", ylabel="val cross-entropy")
    ax_fit.set(title="(c) loss vs logit norm (paper: 0.01074x + 0.25816)", xlabel="mean L2 norm of val logits",
               ylabel="val cross-entropy")
    ax_norm.legend(fontsize="small")
    if ax_fit.get_legend_handles_labels()[0]:
        ax_fit.legend(fontsize="small", title="linear fit")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]


def plot_accuracy_vs_alpha(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "accuracy_vs_alpha.png", ("Final train and test top-1 against α (α off at 1), mean ± std over "
                                              "seeds (paper Figs. 10-13).")
    families = alpha_families(groups)
    if not families:
        return [Plot(file, caption, skipped="needs runs that differ only in α (two values or more)")]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, family in enumerate(families):
        for ax, column in zip(axes, ("train_top1", "val_top1")):
            plot_series(ax, family, column, color=colour(i), label=describe(family[0].settings))
    for ax, title in zip(axes, ("train", "test (validation)")):
        ax.set(title=f"final {title} top-1 vs α", xlabel="α (off = 1)", ylabel="top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]


def plot_transform_effect(*, out: Path) -> list[Plot]:
    logits = torch.tensor(EXAMPLE_LOGITS, dtype=torch.float64)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_raw, ax_sorted = fig.subplots(1, 2, sharey=True)
    classes = np.arange(1, len(EXAMPLE_LOGITS) + 1)
    order = np.argsort(-np.array(EXAMPLE_LOGITS))  # p^α is monotone in p: one order fits every α
    for i, alpha in enumerate(TRANSFORM_ALPHAS):
        p = power_softmax(logits, alpha).numpy()  # p^α / Σ p^α = softmax(α·z)
        ax_raw.plot(classes, p, marker="o", color=colour(i), label=f"α = {alpha:g}")
        ax_sorted.plot(classes, p[order], marker="o", color=colour(i), label=f"α = {alpha:g}")
    for ax, title in zip((ax_raw, ax_sorted), ("unordered", "ordered")):
        ax.axhline(1 / len(EXAMPLE_LOGITS), color="k", linestyle=":", linewidth=0.8, label="uniform 1/C")
        ax.set(title=f"p^α / Σ p^α, {title}", xlabel="class index" if ax is ax_raw else "rank", ylabel="probability",
               xticks=classes)
    ax_sorted.legend()
    fig.savefig(out / "transform_effect.png", dpi=110)
    return [Plot("transform_effect.png", "The transform p^α/Σp^α on one distribution over C = 10 classes for "
                                         "several α: flatter as α falls (paper Fig. 2).")]


ZEROED_COLUMNS = ("zeroed_filters", "zeroed_features")


def zeroed_figure(groups: list[Group], present: list[Group]) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for group in present:
        i = groups.index(group)  # the same colour as in curves.png
        for ax, column in zip(axes, ZEROED_COLUMNS):
            ax.plot(*mean_curve(group, column), color=colour(i), marker=".", label=group.label)
    for ax, what in zip(axes, ("conv filters (all layers)", "pooled features")):
        ax.set(title=f"zeroed-out {what}", xlabel="epoch", ylabel="count (L2 norm < diag.zero_threshold)")
        ax.set_ylim(bottom=0)
        for axis in (ax.xaxis, ax.yaxis):  # epochs and counts are whole numbers (a mean over seeds may not be)
            axis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize="small")
    return fig


def plot_zeroed(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "zeroed_filters.png", ("Zeroed-out conv filters and pooled features per epoch, mean over seeds "
                                           "(paper Figs. 5-7, Sec. 5.2).")
    present = [g for g in groups if all(not np.isnan(r.columns[c]).all() for c in ZEROED_COLUMNS for r in g.runs)]
    if not present:
        return [Plot(file, caption, skipped="no run has zeroed_filters/zeroed_features in summary.csv "
                                            "(diagnostics off)")]
    zeroed_figure(groups, present).savefig(out / file, dpi=110)
    return [Plot(file, caption)]


def group_reliability(group: Group) -> dict:
    """The bins of the group's reliability.npz files summed over seeds (name -> (3, N_BINS)); {} if a seed has none
    or they are of different epochs."""
    paths = [r.path / calibration.RELIABILITY_FILE for r in group.runs]
    if not all(p.is_file() for p in paths):
        return {}
    files = [np.load(p) for p in paths]
    if len({int(f["epoch"]) for f in files}) != 1:
        return {}
    return {name: sum(f[f"bins_{name}"] for f in files) for name in ("z", "alpha") if f"bins_{name}" in files[0]}


def plot_reliability(groups: list[Group], *, out: Path) -> list[Plot]:
    file, caption = "reliability.png", ("Reliability diagram of the last validation, seeds pooled: accuracy against "
                                        "mean confidence per 15-bin confidence bin; solid softmax(z), dashed "
                                        "softmax(α·z) of PGT runs; on the diagonal a model is calibrated.")
    present = [(i, g, bins) for i, g in enumerate(groups) if (bins := group_reliability(g))]
    if not present:
        return [Plot(file, caption, skipped="no run folder has reliability.npz (runs from before calibration)")]
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    for i, group, bins in present:
        for name, style in (("z", "-"), ("alpha", "--")):
            if name in bins:
                count, conf, hits = bins[name]
                used = count > 0
                ax.plot(conf[used] / count[used], hits[used] / count[used], style, color=colour(i), marker=".",
                        label=group.label + (" α·z" if name == "alpha" else ""))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence in bin", ylabel="accuracy in bin")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(out / file, dpi=110)
    return [Plot(file, caption)]
