"""The CPU train path without PIL (data/cpu_crop.py) against the PIL path it replaces (folder.train_transform):
the same crop boxes and flips, their distribution, pixels within a measured bound, hostile files as before."""
import io
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from pgt_train import benchmarking
from pgt_train.data import cpu_crop
from pgt_train.data.folder import SeededImageFolder, TensorCropFolder, build_datasets
from pgt_train.data.torch_loader import CorruptSample, sample_rng, sample_seed

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# Measured on this project's 2-core CPU VM, 2026-12-06, photo-like JPEGs (PHOTO_SHAPES) at 224 px over 400 crops
# (scripts/bench_loader.py): at most 2 grey levels anywhere, 0.02-0.04 on average (simplejpeg 1.9.0 and PIL 13 both
# bundle libjpeg-turbo 3; torch's uint8 antialiased bilinear rounds like PIL's BILINEAR resize). The bounds leave
# room for another libjpeg-turbo build.
MAX_LEVELS, MAX_MEAN_LEVELS = 3, 0.1


def torchvision_draw(height: int, width: int, seed: int):
    """Box and flip as folder.train_transform draws them: v2's own objects under sample_rng."""
    crop, flip = v2.RandomResizedCrop(8, scale=SCALE, ratio=RATIO), v2.RandomHorizontalFlip()
    with sample_rng(seed):
        params = crop.make_params([Image.new("RGB", (width, height))])
        flipped = bool(torch.rand(1) < flip.p)
    return (params["top"], params["left"], params["height"], params["width"]), flipped


def our_draw(height: int, width: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    box = cpu_crop.sample_crop(height, width, scale=SCALE, ratio=RATIO, generator=generator)
    return box, cpu_crop.sample_flip(generator)


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (1, 1), (7, 300), (300, 7), (64, 64)])
def test_boxes_and_flips_are_torchvisions_draw_for_draw(height, width):
    """(7, 300) and (300, 7) hit the central-crop fallback; (1, 1) the degenerate image."""
    for index in range(300):
        seed = sample_seed(5, 2, index)
        assert our_draw(height, width, seed) == torchvision_draw(height, width, seed), (height, width, index)


def box_statistics(boxes, height: int, width: int) -> np.ndarray:
    """(N, 4): area fraction, log aspect ratio, top and left as a fraction of their free range."""
    b = np.asarray(boxes, dtype=np.float64)
    top, left, h, w = b.T
    return np.stack([h * w / (height * width), np.log(w / h),
                     top / np.maximum(height - h, 1), left / np.maximum(width - w, 1)], axis=1)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs."""
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def test_box_distribution_matches_torchvisions_sampler_over_10000_draws():
    """Independent streams: ours seeded per (seed, epoch, index), torchvision's from one global seed. Each statistic's
    KS distance stays under the 0.1 % critical value (1.95 * sqrt(2 / n)); a sampler with scale (0.12, 1) instead of
    (0.08, 1) is caught, so the test can fail."""
    n, height, width = 10_000, 375, 500
    ours = [our_draw(height, width, sample_seed(0, 1, i))[0] for i in range(n)]
    crop = v2.RandomResizedCrop(8, scale=SCALE, ratio=RATIO)
    image = Image.new("RGB", (width, height))
    torch.manual_seed(1234)
    theirs = [(p["top"], p["left"], p["height"], p["width"]) for p in (crop.make_params([image]) for _ in range(n))]
    critical = 1.95 * math.sqrt(2 / n)
    a, b = box_statistics(ours, height, width), box_statistics(theirs, height, width)
    distances = [ks_statistic(a[:, k], b[:, k]) for k in range(4)]
    assert max(distances) < critical, distances
    flips = np.mean([our_draw(height, width, sample_seed(0, 1, i))[1] for i in range(n)])
    assert abs(flips - 0.5) < 4 * 0.5 / math.sqrt(n)
    shifted = [cpu_crop.sample_crop(height, width, scale=(0.12, 1.0), ratio=RATIO,
                                    generator=torch.Generator().manual_seed(i)) for i in range(n)]
    assert ks_statistic(box_statistics(shifted, height, width)[:, 0], b[:, 0]) > critical


def folders(root, img_size: int):
    kw = dict(num_classes=len(list((root / "train").iterdir())), img_size=img_size, val_resize=None,
              crop_scale=SCALE, crop_ratio=RATIO, seed=7)
    (tensor, _), (pil, _) = (build_datasets(str(root), train_path=path, **kw) for path in ("tensor", "pil"))
    assert type(tensor) is TensorCropFolder and type(pil) is SeededImageFolder
    return tensor, pil


@pytest.mark.parametrize("img_size", [224, 64])
def test_pixels_within_the_stated_bound_of_the_pil_path(tmp_path, img_size):
    root = benchmarking.make_jpeg_folder(tmp_path, classes=2, train=4, val=1, texture="photo",
                                         sides=benchmarking.PHOTO_SHAPES, processes=2)
    tensor, pil = folders(root, img_size)
    means = []
    for epoch in (0, 1):
        for index in range(len(tensor)):
            (a, ta), (b, tb) = tensor[(index, epoch)], pil[(index, epoch)]
            assert ta == tb and a.shape == b.shape == (3, img_size, img_size) and a.dtype == b.dtype == torch.uint8
            diff = (a.int() - b.int()).abs()
            assert diff.max().item() <= MAX_LEVELS, (index, epoch, diff.max().item())
            means.append(diff.float().mean().item())
    assert np.mean(means) <= MAX_MEAN_LEVELS, means


def jpeg_bytes(pixels: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", **save)
    return out.getvalue()


def claims_size(data: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0) patched to declare height x width: a decompression bomb's header."""
    at = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height and width (2 each)
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4:]


def hostile_folder(root):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    good = jpeg_bytes(pixels, quality=90)
    files = {"gray.jpg": jpeg_bytes(pixels[..., 0]), "progressive.jpg": jpeg_bytes(pixels, progressive=True),
             "one.jpg": jpeg_bytes(pixels[:1, :1]), "truncated.jpg": good[: len(good) // 2],
             "garbage.jpg": b"\x00not an image" * 20, "bomb.jpg": claims_size(good, 12_000, 12_000),
             "header_only.jpg": good[:200]}
    cmyk, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(cmyk, format="JPEG")
    Image.fromarray(pixels).save(png, format="PNG")
    files.update({"cmyk.jpg": cmyk.getvalue(), "png_named.jpg": png.getvalue()})
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "good.jpg").write_bytes(good)
    for name, data in files.items():
        (root / "train" / "a" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("replace", [False, True])
def test_hostile_files_as_on_the_pil_path(tmp_path, replace):
    """CMYK, grayscale, progressive, PNG named .jpg, 1x1: images as PIL gives them; truncated, garbage, a header
    alone, a bomb's header: the same CorruptSample (same reason), or with replacement the same replacement."""
    tensor, pil = folders(hostile_folder(tmp_path), 32)
    tensor.replace_unreadable = pil.replace_unreadable = replace
    corrupt = set()
    for index, (path, _) in enumerate(tensor.samples):
        a, b = tensor[(index, 0)], pil[(index, 0)]
        assert type(a) is type(b), path
        if isinstance(a, CorruptSample):
            assert (a.path, a.reason) == (b.path, b.reason), path
            corrupt.add(path.rsplit("/", 1)[1])
            if not replace:
                continue
            a, b = a.replacement, b.replacement
        assert a[1] == b[1] and (a[0].int() - b[0].int()).abs().max().item() <= MAX_LEVELS, path
    assert corrupt == {"truncated.jpg", "garbage.jpg", "bomb.jpg", "header_only.jpg"}
    bomb = next(i for i, (p, _) in enumerate(tensor.samples) if p.endswith("bomb.jpg"))
    tensor.replace_unreadable = False
    assert "DecompressionBomb" in tensor[(bomb, 0)].reason


def test_train_path_dispatch(tmp_path, monkeypatch):
    root = benchmarking.make_jpeg_folder(tmp_path, classes=2, train=1, val=1)
    kw = dict(num_classes=2, img_size=16, val_resize=None, crop_scale=SCALE, crop_ratio=RATIO, seed=0)
    with pytest.raises(ValueError, match="unknown train_path 'fast'"):
        build_datasets(str(root), train_path="fast", **kw)
    assert type(build_datasets(str(root), **kw)[0]) is TensorCropFolder  # auto, simplejpeg installed
    assert type(build_datasets(str(root), train_crop="pad_crop", **kw)[0]) is SeededImageFolder
    monkeypatch.setattr(cpu_crop, "simplejpeg", None)  # as where it does not install: today's path
    assert type(build_datasets(str(root), **kw)[0]) is SeededImageFolder


@pytest.mark.parametrize("cores, ranks, expected", [(16, 1, 15), (16, 4, 3), (2, 1, 1), (1, 1, 1), (3, 8, 1)])
def test_auto_workers_are_this_ranks_share_of_the_cores(cores, ranks, expected):
    from pgt_train.data import resolve_workers
    assert resolve_workers("auto", cores=cores, local_ranks=ranks) == expected
    assert resolve_workers(5, cores=cores, local_ranks=ranks) == 5  # a number stays what it says


def test_auto_workers_read_the_affinity_mask_and_local_world_size(monkeypatch):
    import os
    from pgt_train.data import available_cores, resolve_workers
    assert available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's count is not what this rank may use
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_workers("auto") == 3


def test_build_loaders_resolves_auto_workers():
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders, resolve_workers
    from pgt_train.dist import DistInfo
    cfg = DataConfig(loader="synthetic", workers="auto", batch_size=4, img_size=16, train_size=8, val_size=4)
    train, val = build_loaders(cfg, num_classes=2, seed=0, dist=DistInfo(), channels_last=False)
    assert train.loader.num_workers == val.loader.num_workers == resolve_workers("auto") >= 1


def test_batches_are_the_same_for_any_worker_count_and_a_mid_epoch_resume(jpeg_folder):
    """Seeding by (seed, epoch, index) on the tensor path: 0 or 2 workers, or a resume after 2 batches, give the same
    batches as one uninterrupted pass."""
    from pgt_train.config import DataConfig
    from pgt_train.data import build_loaders
    from pgt_train.dist import DistInfo

    def batches(workers, skip=0):
        cfg = DataConfig(root=str(jpeg_folder), batch_size=3, workers=workers, img_size=24)
        train, _ = build_loaders(cfg, num_classes=3, seed=4, dist=DistInfo(), channels_last=False)
        assert type(train.loader.dataset) is TensorCropFolder
        train.set_epoch(1, skip_batches=skip)
        return list(train)

    reference = batches(0)
    assert len(reference) == 6
    for got, expected in ((batches(2), reference), (batches(0, skip=2), reference[2:])):
        assert len(got) == len(expected)
        for (x, y), (x2, y2) in zip(expected, got):
            assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.slow
def test_bench_loader_prints_every_figure_in_one_run(capsys):
    """scripts/bench_loader.py, as docs/speed.md runs it (smaller): the limit, the ceilings, each loader's ratio,
    the pixel difference and the profile, in one run; the ratios are ratios (positive, the same crops' pixels)."""
    import importlib.util
    import re
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_loader", Path(__file__).parents[1] / "scripts/bench_loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--images", "32", "--rounds", "1", "--workers", "1", "--loaders", "tensor", "--batch", "8",
                       "--profile"]) == 0
    out = capsys.readouterr().out
    for needed in ("the limit: the fastest of them, per round", "read + decode whole files",
                   "tensor path's per-sample work, one process", "DALI CPU decode, crop region only (ROI)",
                   "loader tensor, 1 worker(s)", "per worker / the limit", "decode only, this pass"):
        assert needed in out, needed
    ratio = float(re.search(r"per worker / the limit\s+([\d.]+)", out).group(1))
    assert 0.05 < ratio < 2
    mean, peak = map(float, re.search(r"mean \|diff\| ([\d.]+), max (\d+) grey levels", out).groups())
    assert mean <= MAX_MEAN_LEVELS and peak <= MAX_LEVELS


@pytest.mark.parametrize("loader, workers", [("synthetic", 0), ("torchvision", 2), ("nvjpeg", 1)])
def test_every_loader_says_how_many_workers_feed_it(jpeg_folder, loader, workers):
    """Loader.workers (the data-wait hint's per-worker rate divides by it), without starting a worker."""
    from pgt_train.config import DataConfig
    from pgt_train.data import Loader, build_loaders
    from pgt_train.dist import DistInfo
    cfg = DataConfig(root=str(jpeg_folder), loader=loader, batch_size=3, workers=workers, img_size=24, train_size=8,
                     val_size=4)
    train, val = build_loaders(cfg, num_classes=3, seed=0, dist=DistInfo(), channels_last=False)
    assert isinstance(train, Loader) and train.workers == val.workers == workers


def shm_config(free: int, *, batches_per_worker: float, workers: int = 4, ranks: int = 1, img_size: int = 64):
    """A synthetic-loader DataConfig for `ranks` ranks on this machine, whose batches leave room in /dev/shm's free
    space for `batches_per_worker` per worker."""
    from pgt_train.config import DataConfig
    per_rank = max(1, int(free / (batches_per_worker * workers * ranks * 3 * img_size ** 2)))
    return DataConfig(loader="synthetic", batch_size=per_rank * ranks, workers=workers, img_size=img_size)


def test_shared_memory_too_small_for_one_batch_per_worker_is_refused_and_short_of_the_most_is_warned():
    """Against this machine's real /dev/shm: batches that leave room for less than one per worker are refused with
    one line naming the fix; room for 1-8 per worker is a warning; room for more, nothing."""
    import shutil

    from pgt_train.data import SHM_DIR, check_shared_memory
    from pgt_train.errors import UserError
    free = shutil.disk_usage(SHM_DIR).free
    with pytest.raises(UserError, match=r"data\.workers: 4 loader workers .* not one batch per worker; give the "
                                        r"container --ipc=host"):
        check_shared_memory(shm_config(free, batches_per_worker=0.5), world_size=1, local_ranks=1)
    warning = check_shared_memory(shm_config(free, batches_per_worker=4), world_size=1, local_ranks=1)
    assert warning.startswith("warning: data.workers:") and "up to 8 batches per worker" in warning
    assert check_shared_memory(shm_config(free, batches_per_worker=20), world_size=1, local_ranks=1) is None
    # the ranks of this machine share it: batches that one rank's workers would fit 3.6 times fit 0.9 times for 4
    four_ranks = shm_config(free, batches_per_worker=0.9, ranks=4)
    assert check_shared_memory(four_ranks, world_size=4, local_ranks=1) is not None  # as if alone: a warning
    with pytest.raises(UserError, match="16 loader workers .4 per rank x 4 ranks here"):
        check_shared_memory(four_ranks, world_size=4, local_ranks=4)


def test_a_run_whose_batches_cannot_fit_dev_shm_exits_2_before_writing(tmp_path, capsys):
    import shutil

    from pgt_train import cli
    from pgt_train.data import SHM_DIR
    cfg = shm_config(shutil.disk_usage(SHM_DIR).free, batches_per_worker=0.5)
    args = ["--config", "/dev/null", "data.loader=synthetic", f"data.batch_size={cfg.batch_size}", "data.workers=4",
            "data.img_size=64", f"data.train_size={cfg.batch_size}", "data.val_size=8", "model.num_classes=4",
            f"run.dir={tmp_path / 'run'}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not one batch per worker" in err[0], err
    assert not (tmp_path / "run").exists()
