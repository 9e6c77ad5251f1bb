"""Calibration metrics against a hand computation (python loops over floats), the fixed val split, and the
sum over ranks (2 gloo processes)."""
import math
import os
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


def _rank_main(rank: int, port: int, out: dict) -> None:
    """Each rank holds a different part of the val set; the reduced sums must cover both."""
    import torch.distributed as tdist
    from pgt_train.dist import all_reduce_sum
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        idx = list(range(rank, len(LOGITS), 2))
        sums = cal.batch_sums(torch.tensor([LOGITS[i] for i in idx], dtype=torch.float64), torch.tensor([TARGETS[i] for i in idx]),
                              torch.tensor([KEEP[i] for i in idx]).double(), torch.tensor([FIT[i] for i in idx]),
                              0.25)
        out[rank] = cal.finish(all_reduce_sum(sums), 0.25)[0]
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_every_metric_sums_over_both_ranks():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), out), nprocs=2, join=True)
    whole, _ = run_finish(LOGITS, TARGETS, KEEP, FIT, alpha=0.25)
    for rank in (0, 1):
        assert out[rank].keys() == whole.keys()
        for key, value in whole.items():
            assert out[rank][key] == pytest.approx(value, rel=1e-12, abs=1e-15), (rank, key)
    alone, _ = run_finish(LOGITS[::2], TARGETS[::2], KEEP[::2], FIT[::2], alpha=0.25)
    differs = [k for k in whole if not np.isclose(alone[k], whole[k], rtol=1e-9, atol=0)]
    assert len(differs) == len(whole), f"rank 0's part alone equals the whole for {set(whole) - set(differs)}"
