"""`--reading code` trains at the authors' LR, optimizer step by optimizer step.

The reference is computed independently of pgt_train.optim: timm's own create_scheduler_v2 with the arguments the
authors' README passes (skalien/power-grad-transform b7b12ca, README.md:51-73, parser.py defaults; timm 1.0's
factory and their timm 0.4.12 fork's create_scheduler agree on these), driven by a transcription of their
train.py loop (:387-441 and train_one_epoch's per-batch step_update, :573).
"""
import dataclasses

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from pgt_train import config, optim
from tests.helpers import REPO

STEPS = 3  # optimizer steps per epoch (any number: the LR is held per epoch)
CODE = config.reading_path("code")
RECIPES = {"cosine": REPO / "configs/paper/table1/resnet18_cosine.yaml",
           "step": REPO / "configs/paper/table1/resnet18_step.yaml"}


def authors_lrs(sched: str, *, epochs: int = 90, cooldown: int = 10) -> list[float]:
    """The LR of every optimizer step of their train.py (train_continuous 1, no resume), timm's scheduler."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # README.md:66 --lr 1e-1
    scheduler, num_epochs = create_scheduler_v2(
        opt, sched=sched, num_epochs=epochs, decay_epochs=30, decay_rate=0.1, min_lr=1e-4, warmup_lr=0.01,
        warmup_epochs=5, cooldown_epochs=cooldown)  # parser.py:78,80,88,96 defaults; README.md:67-71
    lrs, epoch, num_updates = [], 0, 0
    while True:  # train.py:388
        for _ in range(STEPS):  # train_one_epoch: the LR in force at each step, then step_update (:573)
            lrs.append(opt.param_groups[0]["lr"])
            num_updates += 1
            scheduler.step_update(num_updates=num_updates)
        epoch += 1  # :398
        scheduler.step(epoch + 1)  # :426 "step LR for next epoch"
        if epoch >= num_epochs:  # :440
            return lrs


def code_reading_lrs(recipe, *overrides: str) -> list[float]:
    cfg = config.load(recipe, list(overrides), [CODE])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    scheduler = optim.build_scheduler(opt, **dataclasses.asdict(cfg.sched), steps_per_epoch=STEPS)
    lrs = []
    for step in range(cfg.sched.epochs * STEPS):  # as Trainer.fit: step_update(step) before the step
        scheduler.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def per_epoch(lrs: list[float]) -> list[float]:
    return lrs[::STEPS]


def test_cosine_equals_the_authors_loop_step_for_step():
    theirs, ours = authors_lrs("cosine"), code_reading_lrs(RECIPES["cosine"])
    assert len(theirs) == len(ours) == 100 * STEPS
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    epochs = per_epoch(ours)
    assert epochs[:5] == pytest.approx([0.01, 0.046, 0.064, 0.082, 0.0992], abs=5e-5)
    assert sum(lr == pytest.approx(1e-4) for lr in epochs) == 11  # epochs 89-99 at min_lr


def test_step_equals_the_authors_loop_for_100_epochs():
    # their step factory adds no cooldown (scheduler_factory.py:58-69): --epochs 100 trains 100 epochs
    theirs, ours = authors_lrs("step", epochs=100, cooldown=0), code_reading_lrs(RECIPES["step"])
    assert len(ours) == 100 * STEPS and ours == pytest.approx(theirs, rel=1e-12, abs=0)
    epochs = per_epoch(ours)
    drops = [e for e in range(1, 100) if epochs[e] < epochs[e - 1] * 0.5]
    assert drops == [29, 59, 89]


def test_step_with_the_readme_flags_stops_at_90_epochs():
    # README.md's --epochs 90 --cooldown-epochs 10 with --sched step: 90 epochs; selectable with sched.epochs=90
    theirs, ours = authors_lrs("step"), code_reading_lrs(RECIPES["step"], "sched.epochs=90")
    assert len(theirs) == 90 * STEPS and ours == pytest.approx(theirs, rel=1e-12, abs=0)


def test_paper_reading_keeps_the_unshifted_schedule():
    cfg = config.load(RECIPES["cosine"], overlays=[config.reading_path("paper")])
    assert cfg.sched.epoch_shift is False
    shifted = code_reading_lrs(RECIPES["cosine"])
    unshifted = code_reading_lrs(RECIPES["cosine"], "sched.epoch_shift=false")
    assert per_epoch(unshifted)[:3] == pytest.approx([0.01, 0.028, 0.046])
    assert per_epoch(shifted)[1] != per_epoch(unshifted)[1]


@pytest.mark.parametrize("recipe,interpolation", [
    ("table1/resnet50_cosine.yaml", "bicubic"), ("table1/seresnet18_cosine.yaml", "bicubic"),
    ("table1/resnet18_cosine.yaml", "bilinear"), ("table2/resnet18_nobn_b1024.yaml", "bilinear")])
def test_code_reading_validates_through_the_models_own_resize(jpeg_folder, recipe, interpolation):
    from torchvision.transforms import v2

    from pgt_train.data import resolve_val_resize
    from pgt_train.data.folder import build_datasets
    cfg = config.load(REPO / "configs/paper" / recipe, [f"data.root={jpeg_folder}", "model.num_classes=3"], [CODE])
    assert cfg.data.val_interpolation == "model"
    data = resolve_val_resize(cfg.data, cfg.model.name)
    assert (data.val_interpolation, data.val_resize) == (interpolation, 256)  # crop_pct 0.875 at 224
    _, val = build_datasets(data.root, num_classes=3, img_size=data.img_size, val_resize=data.val_resize,
                            crop_scale=data.crop_scale, crop_ratio=data.crop_ratio, seed=0,
                            val_interpolation=data.val_interpolation)
    resize = next(t for t in val.transform.transforms if isinstance(t, v2.Resize))
    assert resize.interpolation == v2.InterpolationMode[interpolation.upper()] and resize.size == [256]
    paper = config.load(REPO / "configs/paper" / recipe, [f"data.root={jpeg_folder}"], [config.reading_path("paper")])
    assert resolve_val_resize(paper.data, paper.model.name).val_interpolation == "bilinear"


@pytest.mark.slow
def test_dali_val_resize_takes_the_interpolation(jpeg_folder):
    pytest.importorskip("nvidia.dali")
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo
    images = {}
    for interpolation in ("bilinear", "bicubic"):
        data = DataConfig(root=str(jpeg_folder), loader="dali", batch_size=3, workers=1, img_size=32,
                          dali_device="cpu", val_interpolation=interpolation)
        _, val = build_loaders(data, num_classes=3, seed=0, dist=DistInfo(rank=0, world_size=1), channels_last=False)
        images[interpolation] = next(iter(val))[0]
    assert images["bilinear"].shape == images["bicubic"].shape
    assert not torch.equal(images["bilinear"], images["bicubic"])
