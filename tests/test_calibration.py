"""Calibration metrics against a hand computation (python loops over floats), the fixed val split, and the
sum over ranks (2 gloo processes)."""
import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pgt_train import calibration as cal

LOGITS = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [5.0, -2.0, 1.0, 0.5], [-1.0, 3.0, 0.0, 2.5],
          [0.0, 0.0, 4.0, -3.0], [1.5, 1.4, 1.3, -0.2], [-0.5, 0.7, 2.2, 2.1], [3.3, -1.1, 0.4, 6.0],
          [0.0, 1.0, 0.0, 1.0]]
TARGETS = [0, 3, 2, 1, 2, 1, 3, 0, 1]
KEEP = [1, 1, 1, 1, 1, 1, 1, 1, 0]  # the last one is padding: it must count nowhere
FIT = [True, False, True, True, False, False, True, False, True]


def hand_softmax(z, t=1.0):
    m = max(z)
    e = [math.exp((v - m) / t) for v in z]
    return [v / sum(e) for v in e]


def hand_metrics(logits, targets, keep, t=1.0):
    """(nll, brier, conf, ece) means over kept images, python floats only."""
    n = nll = brier = conf = 0.0
    bins = [[0.0, 0.0, 0.0] for _ in range(15)]
    for z, y, k in zip(logits, targets, keep):
        if not k:
            continue
        p = hand_softmax(z, t)
        c = max(p)
        hit = float(z.index(max(z)) == y)
        n, nll, conf = n + 1, nll - math.log(p[y]), conf + c
        brier += sum((pc - (j == y)) ** 2 for j, pc in enumerate(p))
        b = min(int(c * 15), 14)
        bins[b] = [bins[b][0] + 1, bins[b][1] + c, bins[b][2] + hit]
    ece = sum(abs(h - cs) for _, cs, h in bins) / n
    return nll / n, brier / n, conf / n, ece


def run_finish(logits, targets, keep, fit, alpha, batches=1):
    z, y, k, f = torch.tensor(logits, dtype=torch.float64), torch.tensor(targets), torch.tensor(keep).double(), torch.tensor(fit)
    sums = sum(cal.batch_sums(zb, yb, kb, fb, alpha)
               for zb, yb, kb, fb in zip(*(t.tensor_split(batches) for t in (z, y, k, f))))
    assert sums.shape == (cal.sums_size(alpha),)
    return cal.finish(sums, alpha)


@pytest.mark.parametrize("batches", [1, 3])
def test_metrics_match_a_hand_computation(batches):
    metrics, bins = run_finish(LOGITS, TARGETS, KEEP, FIT, alpha=0.25, batches=batches)
    nll, brier, conf, ece = hand_metrics(LOGITS, TARGETS, KEEP)
    assert metrics["val_brier"] == pytest.approx(brier, rel=1e-12)
    assert metrics["val_conf_mean"] == pytest.approx(conf, rel=1e-12)
    assert metrics["val_ece"] == pytest.approx(ece, rel=1e-12, abs=1e-15)
    nll_a, brier_a, conf_a, ece_a = hand_metrics([[0.25 * v for v in z] for z in LOGITS], TARGETS, KEEP)
    assert metrics["val_nll_alpha"] == pytest.approx(nll_a, rel=1e-12)
    assert metrics["val_brier_alpha"] == pytest.approx(brier_a, rel=1e-12)
    assert metrics["val_conf_mean_alpha"] == pytest.approx(conf_a, rel=1e-12)
    assert metrics["val_ece_alpha"] == pytest.approx(ece_a, rel=1e-12, abs=1e-15)
    assert bins["z"][0].sum() == 8 and bins["alpha"].shape == (3, 15)
    assert ece != pytest.approx(ece_a)  # the two softmaxes are told apart


def test_fitted_temperature_matches_a_hand_grid_search():
    metrics, bins = run_finish(LOGITS, TARGETS, KEEP, FIT, alpha=None)
    fit_keep = [k and f for k, f in zip(KEEP, FIT)]
    eval_keep = [k and not f for k, f in zip(KEEP, FIT)]
    grid = [2.0 ** (k / 16) for k in range(-64, 97)]
    t_best = min(grid, key=lambda t: hand_metrics(LOGITS, TARGETS, fit_keep, t)[0])  # first of equal minima
    nll, _, _, ece = hand_metrics(LOGITS, TARGETS, eval_keep, t_best)
    assert metrics["val_temp_fit"] == t_best
    assert metrics["val_nll_tscaled"] == pytest.approx(nll, rel=1e-12)
    assert metrics["val_ece_tscaled"] == pytest.approx(ece, rel=1e-12, abs=1e-15)
    assert bins["tscaled"][0].sum() == sum(eval_keep)
    assert "val_ece_alpha" not in metrics  # a run without PGT has no α columns


def test_overconfident_logits_fit_a_temperature_above_one():
    """Logits 4x too large for their labels (drawn from softmax(z / 4)): T* near 4, ECE falls after scaling."""
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(4000, 10, generator=g)
    y = torch.multinomial(torch.softmax(z / 4, 1), 1, generator=g).squeeze(1)
    fit = torch.arange(4000) % 2 == 0
    metrics, _ = cal.finish(cal.batch_sums(z, y, torch.ones(4000, dtype=torch.float64), fit, None), None)
    assert 3.3 < metrics["val_temp_fit"] < 4.8
    assert metrics["val_ece_tscaled"] < metrics["val_ece"] / 3


def test_fit_half_depends_on_the_image_only():
    images = torch.randn(64, 3, 16, 16)
    half = cal.fit_half(images)
    perm = torch.randperm(64)
    assert torch.equal(cal.fit_half(images[perm]), half[perm])  # batch order
    assert torch.equal(torch.cat([cal.fit_half(b) for b in images.split(5)]), half)  # batch size
    assert torch.equal(cal.fit_half(images.contiguous(memory_format=torch.channels_last)), half)
    assert torch.equal(cal.fit_half(images.half()), cal.fit_half(images.half()[perm])[perm.argsort()])
    assert 16 < int(half.sum()) < 48  # both halves populated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def val_batches():
    """Six val batches of a 5-class problem and a fixed linear model's weights; the last batch ends in padding."""
    g = torch.Generator().manual_seed(0)
    batches = [((1 + 3 * (i % 2)) * torch.randn(6, 3, 4, 4, generator=g), torch.randint(0, 5, (6,), generator=g))
               for i in range(6)]  # rank 1's logits 4x larger: its own fitted temperature differs
    batches[-1][1][-2:] = -1  # DALI's padding: counts nowhere
    return batches, torch.randn(5, 48, generator=g)


def evaluate_batches(batches, weight, alpha):
    from pgt_train.engine import evaluate
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5, bias=False)).double()
    model[1].weight.data.copy_(weight)
    doubled = [(images.double(), targets) for images, targets in batches]
    return evaluate(model, doubled, device=torch.device("cpu"), alpha=alpha)


def _rank_main(rank: int, port: int, out: dict) -> None:
    """Each rank evaluates every second batch; the metrics must cover both ranks' images."""
    import torch.distributed as tdist
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        batches, weight = val_batches()
        metrics = evaluate_batches(batches[rank::2], weight, 0.25)
        out[rank] = {k: v for k, v in metrics.items() if k != "reliability"}
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_every_metric_sums_over_both_ranks(monkeypatch):
    """engine.evaluate under 2 gloo ranks equals one process over all batches, and rank 0's batches alone differ
    in every calibration metric: a metric that ignored a rank would fail here."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the spawned ranks only: later tests' children must not inherit it
    out = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), out), nprocs=2, join=True)
    batches, weight = val_batches()
    whole = evaluate_batches(batches, weight, 0.25)
    assert whole["val_images"] == 34
    for rank in (0, 1):
        for key in cal.COLUMNS:
            assert out[rank][key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), (rank, key)
    alone = evaluate_batches(batches[0::2], weight, 0.25)
    same = [k for k in cal.COLUMNS if np.isclose(alone[k], whole[k], rtol=1e-9, atol=0)]
    assert not same, f"rank 0's batches alone give the whole val set's {same}"


@pytest.mark.slow
def test_a_run_writes_the_calibration_columns(tmp_path):
    """Through pgt-train: summary.csv, TensorBoard and reliability.npz hold the calibration of every epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from pgt_train.writers import read_summary
    from tests.helpers import run_cli, tiny_run_args
    run_dir = tmp_path / "run"
    result = run_cli(*tiny_run_args(run_dir, alpha=0.3, val_size=20))
    assert result.returncode == 0, result.stderr
    rows = read_summary(run_dir / "summary.csv")
    for row in rows:
        values = {k: float(row[k]) for k in cal.COLUMNS}
        assert all(math.isfinite(v) for v in values.values()), values
        assert 0 <= values["val_ece"] <= 1 and 0 <= values["val_brier"] <= 2 and values["val_temp_fit"] > 0
    saved = np.load(run_dir / cal.RELIABILITY_FILE)
    assert int(saved["epoch"]) == 2 and saved["bins_z"][0].sum() == 20 == saved["bins_alpha"][0].sum()
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/ece_alpha")] == [1, 2]
    # pgt-report: the calibration table and the reliability diagram
    from pgt_train.report.cli import main as report_main
    assert report_main([str(run_dir), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    line = next(ln for ln in md.split("## Calibration", 1)[1].splitlines() if ln.startswith("| run |"))
    assert line.startswith(f"| run | 0.3 | 1 | {float(rows[-1]['val_loss']):.3f} | {float(rows[-1]['val_ece']):.3f} |")
    assert "![Reliability diagram" in md and (tmp_path / "report" / "reliability.png").stat().st_size > 0
