"""The DALI loader on real JPEGs, in CPU-only pipelines (the GPU path differs only in device strings).

Checks what a training run relies on: tensors of the right kind, ImageFolder's class indices (so
checkpoints move between loaders), every val image counted exactly once over any number of ranks,
and a checkpoint trained with the torchvision loader scoring the same through DALI.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from pgt_train import cli, engine, models  # noqa: E402
from pgt_train.config import DataConfig  # noqa: E402
from pgt_train.data import build_loaders  # noqa: E402
from pgt_train.data.torch_loader import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pgt_train.dist import DistInfo  # noqa: E402
from pgt_train.writers import read_summary  # noqa: E402
from tests.helpers import make_jpeg_folder, run_torchrun, tiny_run_args  # noqa: E402

# Created in this order; ImageFolder sorts them: apple 0, mango 1, zebra 2. Each class has its own hue.
CLASSES = {"zebra": (200, 30, 30), "apple": (30, 200, 30), "mango": (30, 30, 200)}
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 5
N_VAL = VAL_PER_CLASS * len(CLASSES)  # 15: odd, so 2 ranks hold 7 and 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_jpeg_folder(tmp_path_factory.mktemp("dali_jpegs"), classes=list(CLASSES), train=TRAIN_PER_CLASS,
                            val=VAL_PER_CLASS, colours=list(CLASSES.values()), sides=(40, 90), noise=30.0)


@pytest.fixture
def one_thread():
    """In-process training on a shared 2-core machine: 2 OpenMP threads run ~5x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def loaders(root, *, loader="dali", batch_size=4, rank=0, world=1, channels_last=False, **cfg):
    data = DataConfig(root=str(root), loader=loader, batch_size=batch_size * world, workers=1, img_size=32,
                      dali_device="cpu", **cfg)
    return build_loaders(data, num_classes=len(CLASSES), seed=0, dist=DistInfo(rank=rank, world_size=world),
                         channels_last=channels_last)


def class_of_colour(images):
    """Un-normalises (N, 3, H, W) and returns each image's dominant channel."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (images * std + mean).mean((2, 3)).argmax(1)


def test_the_loader_reports_dalis_threads_as_its_workers(folder):
    from pgt_train.data import Loader
    data = DataConfig(root=str(folder), loader="dali", batch_size=4, workers=2, img_size=32, dali_device="cpu")
    train, val = build_loaders(data, num_classes=len(CLASSES), seed=0, dist=DistInfo(), channels_last=False)
    assert isinstance(train, Loader) and train.workers == val.workers == 2


def test_train_batches_and_imagefolder_labels(folder):
    from torchvision.datasets import ImageFolder
    idx = ImageFolder(str(folder / "train")).class_to_idx
    assert idx == {"apple": 0, "mango": 1, "zebra": 2}
    channel_of_label = torch.tensor([int(np.argmax(CLASSES[name])) for name in sorted(idx, key=idx.get)])
    train, _ = loaders(folder)
    assert len(train) == 3 * TRAIN_PER_CLASS // 4
    seen = []
    for epoch in range(2):
        train.set_epoch(epoch)
        batches = list(train)
        assert len(batches) == len(train)
        for images, targets in batches:
            assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
            assert targets.dtype == torch.int64 and images.device.type == "cpu"
            assert -2.2 < images.min() and images.max() < 2.7  # ImageNet-normalised 0..255
            assert torch.equal(class_of_colour(images), channel_of_label[targets])  # ImageFolder's indices
            seen += targets.tolist()
    assert sorted(set(seen)) == [0, 1, 2]
    train.set_epoch(2, skip_batches=2)  # a mid-epoch resume yields the rest of the epoch
    assert len(list(train)) == len(train) - 2
    next(iter(train))  # a pass left early (the engine stops after its last optimizer step) ...
    assert len(list(train)) == len(train)  # ... does not shorten the next epoch


def test_val_counts_each_image_once_over_ranks(folder):
    truth = sorted([i for i in range(len(CLASSES)) for _ in range(VAL_PER_CLASS)])
    for world, batch in ((1, 4), (2, 4), (2, 7), (3, 2)):  # 2 x 7: rank 0 (7 images) gets a padding-only batch
        labels = []
        for rank in range(world):
            _, val = loaders(folder, batch_size=batch, rank=rank, world=world)
            for _ in range(2):  # a second pass starts where the first one did
                passes = [t for _, t in val]
                assert len(passes) == len(val)
                kept = torch.cat(passes)
                labels += kept[kept >= 0].tolist()
        assert sorted(labels) == sorted(truth * 2), (world, batch)


def test_channels_last_is_the_same_batch(folder):
    _, val = loaders(folder)
    _, val_cl = loaders(folder, channels_last=True)
    for (a, ta), (b, tb) in zip(val, val_cl):
        assert b.is_contiguous(memory_format=torch.channels_last) and b.shape == a.shape
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_fp16_nhwc_batch_comes_from_the_pipeline(folder):
    """output_dtype float16: crop_mirror_normalize emits the fp16 NHWC batch (the same values as fp32, rounded)."""
    from pgt_train.data.dali import build_dali_loaders
    cfg = DataConfig(root=str(folder), loader="dali", batch_size=4, workers=1, img_size=32, dali_device="cpu")
    kw = dict(batch_size=4, num_classes=len(CLASSES), seed=0, dist=DistInfo(rank=0, world_size=1), channels_last=True)
    train16, val16 = build_dali_loaders(cfg, output_dtype="float16", **kw)
    _, val32 = build_dali_loaders(cfg, **kw)
    for (a, ta), (b, tb) in zip(val32, val16):
        assert b.dtype == torch.float16 and b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ta, tb) and (a - b.float()).abs().max().item() <= 2.5e-3  # fp16 spacing near |x| <= 2.7
    images, _ = next(iter(train16))
    assert images.dtype == torch.float16 and images.shape == (4, 3, 32, 32)
    # The train graph decodes only the crop: one image_random_crop operator and no full decode + crop.
    decoders = set(re.findall(rb"decoders__[A-Za-z]+", train16.pipe.serialize()))
    assert decoders == {b"decoders__ImageRandomCrop"}, decoders
    assert set(re.findall(rb"decoders__[A-Za-z]+", val16.pipe.serialize())) == {b"decoders__Image"}  # val: whole


def test_unknown_output_dtype_is_refused(folder):
    from pgt_train.data.dali import build_pipeline
    with pytest.raises(ValueError, match="unknown DALI output dtype 'bfloat16'"):
        build_pipeline(["x.jpg"], [0], train=True, cfg=DataConfig(root=str(folder)), batch_size=1, seed=0,
                       dist=DistInfo(rank=0, world_size=1), gpu=False, channels_last=True, output_dtype="bfloat16")


@pytest.mark.slow
def test_torchrun_two_processes_count_every_val_image(folder, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, "data.loader=dali", "data.dali_device=cpu", root=folder, classes=3, img_size=32,
                         workers=1, epochs=1, warmup=0, lr=0.05, alpha=None)
    result = run_torchrun(2, args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 2 x cpu" in result.stdout
    rows = read_summary(run_dir / "summary.csv")
    assert [int(r["val_images"]) for r in rows] == [N_VAL]
    assert torch.load(run_dir / "last.pth", weights_only=True)["config"]["data"]["loader"] == "dali"


def predictions(model, val):
    out = []
    with torch.no_grad():
        for images, targets in val:
            keep = targets >= 0
            out.append(torch.stack([model(images).argmax(1)[keep], targets[keep]], 1))
    return torch.cat(out)


@pytest.mark.slow
def test_torchvision_checkpoint_scores_the_same_through_dali(folder, tmp_path, one_thread):
    run_dir = tmp_path / "tv"
    code = cli.main(tiny_run_args(run_dir, "data.loader=torchvision", root=folder, classes=3, img_size=32, warmup=0,
                                  lr=0.05, alpha=None))
    assert code == 0
    model = models.build_model("resnet18", num_classes=3)
    model.load_state_dict(torch.load(run_dir / "last.pth", weights_only=True)["model"])
    model.eval()
    by_tv = predictions(model, loaders(folder, loader="torchvision")[1])
    by_dali = predictions(model, loaders(folder)[1])
    assert torch.equal(by_tv[:, 1].sort().values, by_dali[:, 1].sort().values)  # both see each image once
    # Both loaders read val/ in ImageFolder order (DALI's one shard here), so rows pair up image by image.
    assert torch.equal(by_tv[:, 1], by_dali[:, 1])
    top1_tv = (by_tv[:, 0] == by_tv[:, 1]).float().mean().item()
    top1_dali = (by_dali[:, 0] == by_dali[:, 1]).float().mean().item()
    agree = (by_tv[:, 0] == by_dali[:, 0]).float().mean().item()
    assert top1_tv >= 0.6, f"the checkpoint did not learn the colours (top-1 {top1_tv:.2f}): nothing to compare"
    assert agree >= 0.9 and abs(top1_tv - top1_dali) <= 0.1, (agree, top1_tv, top1_dali)
    engine_dali = engine.evaluate(model, loaders(folder)[1], device=torch.device("cpu"))
    assert engine_dali["val_images"] == N_VAL and abs(engine_dali["val_top1"] - 100 * top1_dali) < 1e-6
