"""Optimizer groups, per-iteration schedules and model building, against the paper's setup (Sec. 5.1)."""
import math

import pytest
import torch
from torch import nn

from pgt_train import models, optim
from pgt_train.config import ConfigError

STEPS = 10  # steps per epoch


def lrs(name, **kw):
    model = nn.Linear(2, 2)
    opt = optim.build_optimizer(model, lr=0.4, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                decay_norm_and_bias=False)
    params = dict(epochs=100, warmup_epochs=5, warmup_lr=4e-4, milestones=(30, 60, 90), gamma=0.1, min_lr=0.0)
    sched = optim.build_scheduler(opt, name=name, steps_per_epoch=STEPS, **{**params, **kw})
    out = []
    for step in range(100 * STEPS):
        sched.step_update(step)  # the LR used by optimizer step `step` (0-based)
        out.append(optim.current_lr(opt))
    return out


def test_warmup_is_linear_from_warmup_lr_to_peak():
    for name in ("step", "cosine"):
        lr = lrs(name)
        assert lr[0] == pytest.approx(4e-4)
        assert lr[25] == pytest.approx(4e-4 + (0.4 - 4e-4) * 25 / 50)
        assert lr[50] == pytest.approx(0.4)  # the first step after 5 warmup epochs runs at the peak


def test_step_schedule_divides_by_ten_at_epochs_30_60_90():
    lr = lrs("step")
    for epoch, expected in ((29, 0.4), (30, 0.04), (59, 0.04), (60, 0.004), (90, 0.0004), (99, 0.0004)):
        assert lr[epoch * STEPS] == pytest.approx(expected), epoch
    assert lr[30 * STEPS - 1] == pytest.approx(0.4)  # the last step of epoch 29 is not yet decayed


def test_cosine_decays_after_warmup_to_min_lr():
    lr = lrs("cosine")
    assert lr[50 + 475] == pytest.approx(0.2, rel=1e-3)  # halfway through the 95 cosine epochs
    assert lr[-1] < 1e-4 and all(a >= b for a, b in zip(lr[50:], lr[51:]))


def test_no_weight_decay_on_norm_and_bias_unless_asked():
    model = models.build_model("resnet18", num_classes=10)
    default = optim.build_optimizer(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                    decay_norm_and_bias=False)
    decayed = {id(p) for g in default.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(id(p) not in decayed for n, p in model.named_parameters() if p.ndim == 1)  # BN weights, biases
    assert all(id(p) in decayed for n, p in model.named_parameters() if p.ndim > 1)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in default.param_groups)
    everything = optim.build_optimizer(model, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                                       decay_norm_and_bias=True)
    assert all(g["weight_decay"] == 5e-4 and not g["nesterov"] for g in everything.param_groups)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101", "seresnet18", "seresnet50"])
def test_paper_models_build_with_and_without_norm(name):
    with_bn = models.build_model(name, num_classes=7)
    without = models.build_model(name, num_classes=7, norm="none")
    assert models.count_norm_layers(with_bn) > 0 and models.count_norm_layers(without) == 0
    assert without(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_unknown_model_names_similar_ones():
    with pytest.raises(ConfigError, match="model.name: 'resnet5' is not a timm model"):
        models.build_model("resnet5", num_classes=10)


def test_unwrap_finds_the_plain_model_inside_compile():
    plain = nn.Linear(2, 2)
    assert models.unwrap(torch.compile(plain)) is plain


def test_authors_schedule_per_epoch_with_cooldown_and_cosine_from_epoch_zero():
    """The code reading's schedule (configs/reading/code.yaml) at lrs()'s peak 0.4: warmup over 5 epochs from
    0.01, a cosine of the epoch counted from 0 over 90 epochs (warmup_prefix false), then 10 cooldown epochs at
    min_lr 1e-4, one LR per epoch (timm's t_in_epochs)."""
    lr = lrs("cosine", update="epoch", cooldown_epochs=10, warmup_prefix=False, warmup_lr=0.01, min_lr=1e-4)
    for epoch in range(100):
        if epoch < 5:
            want = 0.01 + epoch * (0.4 - 0.01) / 5
        elif epoch < 90:
            want = 1e-4 + (0.4 - 1e-4) * (1 + math.cos(math.pi * epoch / 90)) / 2
        else:
            want = 1e-4
        epoch_lrs = lr[epoch * STEPS:(epoch + 1) * STEPS]
        assert max(epoch_lrs) == min(epoch_lrs), epoch  # one LR per epoch
        assert epoch_lrs[0] == pytest.approx(want, rel=1e-12), epoch
    assert lr[5 * STEPS] == pytest.approx(0.4 * 0.99240, rel=1e-4)  # epoch 5 starts below the peak


def test_step_update_moves_within_an_epoch_and_cooldown_holds_min_lr():
    lr = lrs("cosine", cooldown_epochs=10, min_lr=1e-3)
    assert lr[1] > lr[0]  # per-iteration warmup
    assert all(x == pytest.approx(1e-3) for x in lr[90 * STEPS:])  # cooldown: the last 10 epochs at min_lr
    assert lr[90 * STEPS - 1] > 1e-3  # the cosine spans epochs 5-90 and ends there


def test_cifar_resnet20_is_he_et_al():
    import torch
    from pgt_train.data.folder import train_transform
    from torchvision.transforms import v2
    model = models.build_model("resnet20", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al. (2016): 0.27 M
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.count_norm_layers(models.build_model("resnet20", num_classes=10, norm="none")) == 0
    crop = train_transform(32, (0.08, 1.0), (0.75, 4 / 3), "pad_crop").transforms[0]
    assert isinstance(crop, v2.RandomCrop) and crop.padding == [4, 4, 4, 4]
