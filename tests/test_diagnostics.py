"""Diagnostics of Figs. 5-8 against hand-computed values, and their files read back."""
import numpy as np
import timm
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from pgt_train.diagnostics import Diagnostics, feature_norms, filter_norms
from pgt_train.writers import RunWriter


def test_filter_and_feature_norms_closed_form():
    w = torch.zeros(3, 2, 1, 1)
    w[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    w[2, 0, 0, 0] = -2.0  # norm 2; filter 1 stays zero
    assert filter_norms(w).tolist() == [5.0, 0.0, 2.0]
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # (N=4, F=2)
    assert feature_norms(features).tolist() == [1.0, 0.0]  # RMS over the batch


def test_zeroed_layer_is_counted_warned_and_written(tmp_path):
    model = timm.create_model("resnet18", num_classes=5, norm_layer=nn.Identity)
    with torch.no_grad():
        model.layer2[0].conv1.weight.zero_()  # a whole layer collapses, as in the paper's Fig. 6
    warnings = []
    writer = RunWriter(tmp_path, enabled=True)
    diag = Diagnostics(model, interval=2, zero_threshold=1e-3, writer=writer, run_dir=tmp_path, log=warnings.append)
    for step in (1, 2, 3, 4):
        model(torch.randn(4, 3, 32, 32))  # the hook captures the forward after a measuring step
        diag.after_step(step)
    totals = diag.epoch_end()
    diag.write()  # as every checkpoint save does
    writer.close()
    assert totals["zeroed_filters"] == model.layer2[0].conv1.out_channels == 128
    assert len(warnings) == 1 and "layer2.0.conv1" in warnings[0]
    assert 0 <= totals["zeroed_features"] <= 512 and totals["train_logit_norm"] > 0
    series = np.load(tmp_path / "filter_norms.npz")
    assert series["step"].tolist() == [2, 4]
    assert series["layer2.0.conv1"].shape == (2, 128) and not series["layer2.0.conv1"].any()
    expected = filter_norms(model.conv1.weight).half().numpy()
    assert np.array_equal(series["conv1"][0], expected)
    events = EventAccumulator(str(tmp_path / "tb" / "steps"))  # step-level series
    events.Reload()
    assert [e.value for e in events.Scalars("zeroed_filters/total")] == [128, 128]
    assert "filter_norm/layer2.0.conv1" in events.Tags()["histograms"]


def test_resumed_series_drops_steps_after_the_checkpoint(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    writer = RunWriter(tmp_path, enabled=False)
    first = Diagnostics(model, interval=1, zero_threshold=1e-3, writer=writer, run_dir=tmp_path, log=print)
    for step in (1, 2, 3):
        first.after_step(step)
    first.write()
    resumed = Diagnostics(model, interval=1, zero_threshold=1e-3, writer=writer, run_dir=tmp_path, log=print,
                          start_step=2)
    resumed.after_step(3)
    resumed.write()
    assert np.load(tmp_path / "filter_norms.npz")["step"].tolist() == [1, 2, 3]
