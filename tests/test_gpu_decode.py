"""data.loader=nvjpeg on the CPU: the same code as on a GPU with decode_jpeg(device='cpu') (libjpeg-turbo).

Reference is the torchvision loader (PIL decode + v2 transforms in the workers). Crop boxes and flips
must be the torchvision path's exactly; pixels differ only by the resize kernel: PIL's antialiased
bilinear against torchvision's uint8 tensor kernel. Measured on these JPEGs: decoded pixels identical
(both libjpeg-turbo), crops within 1 grey level everywhere, mean |diff| <= 0.07 levels. A wrong box or
flip on these noise-textured images moves pixels by tens of levels on average.
"""
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as TF

from pgt_train.errors import UserError
from pgt_train import benchmarking
from pgt_train.config import DataConfig
from pgt_train.data import build_loaders
from pgt_train.data.folder import build_datasets
from pgt_train.data.gpu_decode import (BatchDecoder, EncodedSample, build_encoded_datasets,
                                       collate_encoded)
from pgt_train.data.torch_loader import IMAGENET_MEAN, IMAGENET_STD, CorruptSample
from pgt_train.dist import DistInfo
from pgt_train.writers import read_summary
from tests.helpers import JPEG_CLASSES as CLASSES, REPO, make_jpeg_folder, run_python, run_torchrun, tiny_run_args

MAX_LEVELS, MAX_MEAN_LEVELS = 1, 0.25  # measured 1 and 0.07 (see the module docstring)
IMG = 32


def levels(images):
    """Normalised float images back to 0..255 grey levels."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return images * std + mean


def loaders(root, loader, *, batch_size=4, workers=0, rank=0, world=1):
    cfg = DataConfig(root=str(root), loader=loader, batch_size=batch_size * world, workers=workers, img_size=IMG)
    return build_loaders(cfg, num_classes=len(CLASSES), seed=3, dist=DistInfo(rank=rank, world_size=world),
                         channels_last=False)


def datasets(root, seed=3):
    kw = dict(num_classes=len(CLASSES), img_size=IMG, val_resize=None, crop_scale=(0.08, 1), crop_ratio=(3 / 4, 4 / 3),
              seed=seed)
    return build_datasets(str(root), train_path="pil", **kw), build_encoded_datasets(str(root), **kw)


def assert_close_batches(reference, candidate):
    assert len(reference) == len(candidate)
    for (x, y), (x2, y2) in zip(reference, candidate):
        assert torch.equal(y, y2)  # same samples, same order, ImageFolder's class indices
        assert x.shape == x2.shape and x2.dtype == torch.float32
        diff = (levels(x) - levels(x2)).abs()
        assert diff.max().item() <= MAX_LEVELS + 1e-3 and diff.mean().item() <= MAX_MEAN_LEVELS, \
            (diff.max().item(), diff.mean().item())


def test_class_indices_and_file_list_are_imagefolders(jpeg_folder):
    (train, val), (enc_train, enc_val) = datasets(jpeg_folder)
    for split, enc in (("train", enc_train), ("val", enc_val)):
        reference = ImageFolder(str(jpeg_folder / split))
        assert enc.class_to_idx == reference.class_to_idx == {"a_round": 0, "b_square": 1, "c_stripe": 2}
        assert enc.samples == reference.samples and len(enc) == len(reference)


def test_crop_box_and_flip_are_the_torchvision_paths(jpeg_folder):
    """Cropping the PIL image at the drawn box (and flipping) reproduces the torchvision path bit for bit."""
    (train, _), (enc_train, _) = datasets(jpeg_folder)
    flips = set()
    for epoch in (0, 1):
        for index in range(len(train)):
            sample = enc_train[(index, epoch)]
            assert isinstance(sample, EncodedSample) and sample.target == train.samples[index][1]
            expected, _ = train[(index, epoch)]
            top, left, height, width = sample.box
            pil = Image.open(train.samples[index][0]).convert("RGB")
            crop = TF.pil_to_tensor(TF.resized_crop(pil, top, left, height, width, [IMG, IMG], antialias=True))
            assert torch.equal(TF.horizontal_flip(crop) if sample.flip else crop, expected), (index, epoch)
            flips.add(sample.flip)
    assert flips == {True, False}
    assert enc_train[(0, 0)].box != enc_train[(0, 1)].box  # the epoch enters the seed


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_match_the_torchvision_loader(jpeg_folder, workers):
    tv_train, tv_val = loaders(jpeg_folder, "torchvision", workers=workers)
    nv_train, nv_val = loaders(jpeg_folder, "nvjpeg", workers=workers)
    assert type(nv_train).__name__ == "NvjpegLoader" and len(nv_train) == len(tv_train)
    for epoch in (0, 1):
        tv_train.set_epoch(epoch)
        nv_train.set_epoch(epoch)
        assert_close_batches(list(tv_train), list(nv_train))
    assert_close_batches(list(tv_val), list(nv_val))
    assert nv_train.take_corrupt_count() == 0


def test_mid_epoch_resume_equals_uninterrupted(jpeg_folder):
    full, _ = loaders(jpeg_folder, "nvjpeg", batch_size=2, workers=1)
    full.set_epoch(2)
    straight = list(full)
    resumed, _ = loaders(jpeg_folder, "nvjpeg", batch_size=2, workers=1)
    resumed.set_epoch(2, skip_batches=3)
    rest = list(resumed)
    assert len(straight) == len(full) == 9 and len(rest) == len(straight) - 3
    for (x, y), (x2, y2) in zip(straight[3:], rest):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_photo_textured_jpegs_match_the_torchvision_loader(tmp_path):
    """gpu_check's ImageNet-like JPEGs (make_jpeg_folder's photo texture and shapes, here a fifth of the size)."""
    shapes = [(w // 5, h // 5) for w, h in benchmarking.PHOTO_SHAPES]
    root = make_jpeg_folder(tmp_path, train=3, val=2, texture="photo", sides=shapes, processes=2)
    for path in root.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size in shapes
    tv_train, tv_val = loaders(root, "torchvision")
    nv_train, nv_val = loaders(root, "nvjpeg")
    assert_close_batches(list(tv_train), list(nv_train))
    assert_close_batches(list(tv_val), list(nv_val))


def odd_files_folder(root: Path) -> tuple[Path, dict]:
    """One class of plain JPEGs, one of files nvJPEG must not get (PNG, CMYK, grayscale, progressive),
    one with a plain JPEG beside two corrupt files. Returns the root and what each file should become."""
    rng = np.random.default_rng(1)
    kinds = {}

    def save(split, cls, name, mode, **kw):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        image.save(root / split / cls / name, **kw)
        return root / split / cls / name

    for split in ("train", "val"):
        for i in range(3):
            kinds[str(save(split, "a_plain", f"{i}.jpg", "RGB", quality=90))] = "encoded"
        kinds[str(save(split, "b_odd", "png.png", "RGB"))] = "pil"
        kinds[str(save(split, "b_odd", "cmyk.jpg", "CMYK", quality=90))] = "pil"
        kinds[str(save(split, "b_odd", "gray.jpg", "L", quality=90))] = "pil"
        kinds[str(save(split, "b_odd", "progressive.jpg", "RGB", quality=90, progressive=True))] = "pil"
        kinds[str(save(split, "c_mixed", "plain.jpg", "RGB", quality=90))] = "encoded"
        cut = save(split, "c_mixed", "truncated.jpg", "RGB", quality=90)
        cut.write_bytes(cut.read_bytes()[:400])
        (root / split / "c_mixed" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
        kinds[str(cut)] = kinds[str(root / split / "c_mixed" / "garbage.jpg")] = "corrupt"
    return root, kinds


def test_odd_and_corrupt_files_take_the_torchvision_path(tmp_path):
    root, kinds = odd_files_folder(tmp_path)
    kw = dict(num_classes=3, img_size=IMG, val_resize=None, crop_scale=(0.08, 1), crop_ratio=(3 / 4, 4 / 3), seed=0)
    reference = build_datasets(str(root), train_path="pil", **kw)
    for folder, encoded in zip(reference, build_encoded_datasets(str(root), **kw)):
        for index, (path, _) in enumerate(folder.samples):
            got, expected = encoded[(index, 1)], folder[(index, 1)]
            kind = {EncodedSample: "encoded", CorruptSample: "corrupt"}.get(type(got), "pil")
            assert kind == kinds[path], path
            if kind == "pil":  # the torchvision path itself, in the worker
                assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
            if kind == "corrupt":
                assert got == expected
    # batch 4: no val batch is corrupt files only (TorchLoader's collate cannot take an empty batch)
    tv_train, tv_val = loaders(root, "torchvision", batch_size=4)
    nv_train, nv_val = loaders(root, "nvjpeg", batch_size=4)
    tv_train.set_epoch(1)
    nv_train.set_epoch(1)
    assert_close_batches(list(tv_train), list(nv_train))
    assert nv_train.take_corrupt_count() == tv_train.take_corrupt_count()
    assert_close_batches(list(tv_val), list(nv_val))
    assert nv_val.take_corrupt_count() == tv_val.take_corrupt_count() == 2  # val reads every file once


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_batched_crop_equals_the_per_image_path(tmp_path, interpolation):
    """device_crop's batch op vs BatchDecoder.transform (torchvision's resized_crop + flip, per image) on the same
    boxes and flips, on photo-textured JPEGs of 6 sizes: within 1 grey level, mean <= 0.05 (measured: max 1,
    mean <= 0.01 on this project's CPU machine, 2026-12-02). Val: Resize + CenterCrop, bilinear and bicubic."""
    from pgt_train.data.gpu_decode import NORM_MEAN, NORM_STD
    shapes = [(w // 3, h // 3) for w, h in benchmarking.PHOTO_SHAPES]
    root = make_jpeg_folder(tmp_path, train=2, val=2, texture="photo", sides=shapes)
    kw = dict(num_classes=len(CLASSES), img_size=IMG, val_resize=None, crop_scale=(0.08, 1),
              crop_ratio=(3 / 4, 4 / 3), seed=5, val_interpolation=interpolation)
    for dataset in build_encoded_datasets(str(root), **kw):
        samples = [dataset[(i, 1)] for i in range(len(dataset))]
        batch = collate_encoded(samples)
        decoder = BatchDecoder(dataset, device=torch.device("cpu"), dtype=torch.float16, channels_last=True)
        images, targets, corrupt = decoder(batch)
        assert images.dtype == torch.float16 and images.is_contiguous(memory_format=torch.channels_last)
        decoded, _ = decoder.decode(batch)
        reference = torch.stack([decoder.transform(im, box, flip) for im, box, flip in
                                 zip(decoded, batch.boxes.tolist(), batch.flips.tolist())]).float()
        diff = ((images.float() * NORM_STD + NORM_MEAN) - reference).abs()
        assert diff.max().item() <= 1 + 0.2 and diff.mean().item() <= 0.05, (diff.max(), diff.mean())  # fp16: 0.2
        assert torch.equal(targets, batch.targets) and not corrupt
        if dataset.train:
            assert set(batch.flips.tolist()) == {True, False}  # both branches of the batched flip ran


def test_a_file_the_batched_decode_rejects_is_retried_alone_then_counted(jpeg_folder):
    _, (enc_train, enc_val) = datasets(jpeg_folder)
    png = io.BytesIO()
    Image.new("RGB", (40, 40)).save(png, "PNG")  # passed the header check in no real worker; decode_jpeg refuses it
    for dataset in (enc_train, enc_val):
        samples = [dataset[(i, 0)] for i in range(3)]
        bad = samples[1]._replace(data=torch.frombuffer(bytearray(png.getvalue()), dtype=torch.uint8))
        decoder = BatchDecoder(dataset, device=torch.device("cpu"))
        images, targets, corrupt = decoder(collate_encoded([samples[0], bad, samples[2]]))
        good, good_targets, none_corrupt = decoder(collate_encoded([samples[0], samples[2]]))
        assert [c.path for c in corrupt] == [dataset.samples[samples[1].index][0]] and not none_corrupt
        if dataset.train:  # the batch keeps its size, as on the torchvision path: another image stands in
            assert torch.equal(images[[0, 2]], good) and torch.equal(images[1], good[0])
            assert targets.tolist() == [samples[0].target, samples[0].target, samples[2].target]
        else:  # validation scores only real files
            assert torch.equal(images, good) and torch.equal(targets, good_targets)


def test_a_batch_of_only_corrupt_files_is_reported_with_the_next_batch(jpeg_folder):
    from pgt_train.data.gpu_decode import DecodedBatches
    _, (_, enc_val) = datasets(jpeg_folder)
    broken = [CorruptSample("a.jpg", "bad"), CorruptSample("b.jpg", "bad")]
    good = [enc_val[(i, 0)] for i in range(2)]
    batches = DecodedBatches([collate_encoded(broken), collate_encoded(good)],
                             BatchDecoder(enc_val, device=torch.device("cpu")), train=False)
    (images, targets, corrupt), = list(batches)
    assert images.shape == (2, 3, IMG, IMG) and [c.path for c in corrupt] == ["a.jpg", "b.jpg"]
    # in training a skipped batch would leave this rank a step behind the others: stop with one line instead
    training = DecodedBatches([collate_encoded(broken), collate_encoded(good)],
                              BatchDecoder(enc_val, device=torch.device("cpu")), train=True)
    with pytest.raises(UserError, match="no image of a training batch could be decoded"):
        list(training)


def test_a_fifo_named_jpg_is_not_opened(tmp_path):
    """Opening a FIFO blocks until a writer appears: the worker must not read one (SIGALRM ends a hang)."""
    import signal
    root = make_jpeg_folder(tmp_path, train=2, val=1)
    os.mkfifo(root / "train" / CLASSES[0] / "fifo.jpg")
    _, (enc_train, _) = datasets(root)
    index = [p for p, _ in enc_train.samples].index(str(root / "train" / CLASSES[0] / "fifo.jpg"))
    signal.alarm(20)
    try:
        sample = enc_train[(index, 0)]
    finally:
        signal.alarm(0)
    assert isinstance(sample, CorruptSample)


def test_config_accepts_nvjpeg():
    from pgt_train import config
    assert config.load(None, ["data.loader=nvjpeg", "data.root=/data"]).data.loader == "nvjpeg"


@pytest.mark.slow
def test_torchrun_two_processes_count_every_val_image_once(tmp_path):
    root = make_jpeg_folder(tmp_path / "data", train=6, val=3)  # 9 val images: odd over 2 ranks
    run_dir = tmp_path / "run"
    args = tiny_run_args(run_dir, "data.loader=nvjpeg", root=root, model="resnet10t", classes=len(CLASSES),
                         img_size=IMG, batch=4, workers=1, epochs=1, warmup=0, lr=0.05, alpha=None)
    result = run_torchrun(2, args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on 2 x cpu" in result.stdout
    rows = read_summary(run_dir / "summary.csv")
    assert [int(r["val_images"]) for r in rows] == [3 * len(CLASSES)]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_the_end_to_end_section(tmp_path):
    out = tmp_path / "gc"
    import subprocess
    import sys
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")  # the wrapper sets PYTHONPATH itself
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "gpu_check.log").read_text() == result.stdout  # the wrapper keeps the log
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_step"]["ok"], report["skipped_step"]  # fused SGD held params and momentum (CPU here)
    assert report["skipped_step"]["momentum_unchanged"] and report["skipped_step"]["scale_after"] == 512
    e2e = report["end_to_end"]
    assert "error" not in e2e, e2e
    assert e2e["nvjpeg_check"]["ok"], e2e["nvjpeg_check"]
    runs = {(r["loader"], r["compile"]) for r in e2e["runs"]}
    assert {("bare", False), ("synthetic", False), ("torchvision", False), ("torchvision:pil", False),
            ("nvjpeg:torchvision", False)} <= runs
    for r in e2e["runs"]:
        assert r["img_per_s"] > 0 and r["steps"] >= 2 and r["cpu_cores_busy"] is not None
    assert {r["loop"] for r in e2e["runs"] if r["loader"] != "bare"} == {"engine"}  # end to end = pgt-train's engine
    assert "img/s" in result.stdout and "of synthetic" in result.stdout


def test_decoding_runs_one_batch_ahead_of_training(jpeg_folder):
    """DecodedBatches queues batch k+1's decode (on the side stream under CUDA) before it yields batch k, and
    yields every batch once, in order: the overlap changes nothing the trainer sees. On the CPU the side stream
    is a no-op (SideStream.stream is None)."""
    from pgt_train.data.gpu_decode import DecodedBatches
    _, (enc_train, _) = datasets(jpeg_folder)
    batches = [collate_encoded([enc_train[(i, 0)] for i in range(j, j + 3)]) for j in (0, 3, 6)]
    decoder = BatchDecoder(enc_train, device=torch.device("cpu"))
    calls = []
    counting = lambda batch: calls.append(len(calls)) or decoder(batch)  # noqa: E731
    counting.device = decoder.device
    decoded = DecodedBatches(batches, counting, train=True)
    assert decoded.side.stream is None
    seen = []
    for images, targets, _ in decoded:
        seen.append((len(calls), targets))
    assert [n for n, _ in seen] == [2, 3, 3]  # batch 0 comes once batch 1 is decoded
    for (_, targets), batch in zip(seen, batches):
        assert torch.equal(targets, batch.targets)
    for (images, _, _), batch in zip(DecodedBatches(batches, decoder, train=True), batches):
        assert torch.equal(images, decoder(batch)[0])


def test_batched_crop_in_size_groups_equals_one_group(tmp_path):
    """A batch whose padded tensor would exceed the pixel budget is cropped in groups of similar area: same output."""
    from pgt_train.data import device_crop
    from pgt_train.data.gpu_decode import NORM_MEAN, NORM_STD
    root = make_jpeg_folder(tmp_path, train=2, val=1, sides=[(40, 30), (90, 71), (30, 60), (71, 71)])
    (enc_train, _) = build_encoded_datasets(str(root), num_classes=len(CLASSES), img_size=IMG, val_resize=None,
                                            crop_scale=(0.08, 1), crop_ratio=(3 / 4, 4 / 3), seed=1)
    batch = collate_encoded([enc_train[(i, 0)] for i in range(len(enc_train))])
    images, _ = BatchDecoder(enc_train, device=torch.device("cpu")).decode(batch)
    shapes = [tuple(im.shape[1:]) for im in images]
    budget = 2 * max(h for h, _ in shapes) * max(w for _, w in shapes)  # two of the largest per group at most
    groups = device_crop.size_groups(shapes, budget)
    assert len(groups) > 1 and sorted(sum(groups, [])) == list(range(len(images)))
    assert all(len(g) * max(shapes[k][0] for k in g) * max(shapes[k][1] for k in g) <= budget for g in groups)
    rows, cols = device_crop.train_spans(batch.boxes, IMG)
    kw = dict(flips=batch.flips, size=IMG, kind="bilinear", mean=NORM_MEAN, std=NORM_STD, dtype=torch.float32,
              channels_last=False)
    assert torch.equal(device_crop.crop_batch(images, rows, cols, budget=budget, **kw),
                       device_crop.crop_batch(images, rows, cols, **kw))
