"""Data sources behind one `build_loaders` call.

Every loader is an iterable of (images, targets) already on the device, normalised, in the model's
memory format, with `len()` (micro-batches per rank per epoch) and `set_epoch(epoch, skip_batches)`.
Validation targets of -1 mark padding that metrics must ignore (DALI pads its last batch).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import torch

from pgt_train.config import DataConfig
from pgt_train.data.base import Loader, check_train_size  # noqa: F401  (the loader contract)
from pgt_train.dist import DistInfo, barrier
from pgt_train.errors import UserError


def per_rank_batch(global_batch: int, world_size: int, accum_steps: int) -> int:
    """The global batch is fixed by the recipe; the hardware only changes how it is split."""
    parts = world_size * accum_steps
    if global_batch % parts:
        raise UserError(f"data.batch_size={global_batch} does not divide into {world_size} processes x "
                        f"{accum_steps} accumulation steps; choose a multiple of {parts}")
    return global_batch // parts


def available_cores() -> int:
    """The cores this process may run on: its affinity mask (a container's or a scheduler's cpuset), not the
    machine's os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (macOS): every core
        return os.cpu_count() or 1


def resolve_workers(workers, *, cores: int | None = None, local_ranks: int | None = None) -> int:
    """data.workers as a number: itself, or for `auto` this rank's share of the cores (the affinity mask divided
    among the LOCAL_WORLD_SIZE ranks of this machine) less one for the training process itself, at least 1."""
    if workers != "auto":
        return int(workers)
    cores = available_cores() if cores is None else cores
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_ranks is None else local_ranks
    return max(1, cores // max(1, local_ranks) - 1)


SHM_DIR = Path("/dev/shm")  # where torch's loader workers put the batches they hand over (Linux)


def check_shared_memory(cfg: DataConfig, *, world_size: int, local_ranks: int,
                        shm_dir: Path = SHM_DIR) -> str | None:
    """Loader workers hand their uint8 batches over in shared memory. UserError when this machine's ranks cannot
    hold one batch per worker there (the workers would die of SIGBUS, Docker's 64 MB /dev/shm being the usual
    cause); a warning line (returned) when there is less than the most a run can hold at once: PREFETCH batches
    in flight, one in use and the training pool's blocks per worker (torch_loader.py)."""
    workers = resolve_workers(cfg.workers, local_ranks=local_ranks)
    if workers == 0 or cfg.loader not in ("torchvision", "synthetic") or not shm_dir.is_dir():
        return None  # nvjpeg's workers hand over file bytes; DALI's threads share nothing
    from pgt_train.data.torch_loader import POOL_SLOTS, PREFETCH
    batch = per_rank_batch(cfg.batch_size, world_size, cfg.accum_steps) * 3 * cfg.img_size ** 2
    total, most, free = workers * local_ranks, PREFETCH + 1 + POOL_SLOTS, shutil.disk_usage(shm_dir).free
    if free >= most * batch * total:
        return None
    what = (f"{total} loader workers ({workers} per rank x {local_ranks} ranks here) hand over batches of "
            f"{batch / 2**20:.1f} MiB through {shm_dir}, which has {free / 2**20:.0f} MiB free")
    advice = "give the container --ipc=host or a larger --shm-size, or lower data.workers or data.batch_size"
    if free < batch * total:
        raise UserError(f"data.workers: {what}, not one batch per worker; {advice}")
    return (f"warning: data.workers: {what}; a run can hold up to {most} batches per worker at once "
            f"({most * batch * total / 2**30:.1f} GiB), and a worker that finds no room dies of SIGBUS; {advice}")


def check_folders(cfg: DataConfig, *, num_classes: int) -> None:
    """data.root's layout, class folders and readability, checked before anything is built or written
    (cli.preflight). The demo's folder is written later (prepare_demo); build_datasets checks its layout then."""
    if cfg.loader == "synthetic" or cfg.demo.enabled:
        return
    from pgt_train.data.folder import check_folder
    check_folder(Path(cfg.root).expanduser(), num_classes)


def check_decoder(cfg: DataConfig) -> None:
    """data.decoder imports here (data.loader nvjpeg), checked before anything is built or written (cli.preflight)."""
    if cfg.loader != "nvjpeg" or cfg.decoder == "auto":
        return
    from pgt_train.data.decoders import get_decoder
    try:
        get_decoder(cfg.decoder)
    except ImportError as e:
        raise UserError(f"data.decoder: {e}") from None


def prepare_demo(cfg: DataConfig, dist: DistInfo) -> None:
    """Rank 0 writes the demo JPEGs once (cached by parameters); the other ranks wait for it."""
    if not cfg.demo.enabled:
        return
    if dist.is_main:
        from pgt_train.data.demo import make_demo_dataset
        d = cfg.demo
        try:
            make_demo_dataset(Path(cfg.root), seed=d.seed, num_classes=d.classes, train_per_class=d.train_per_class,
                              val_per_class=d.val_per_class, image_size=d.image_size, difficulty=d.difficulty,
                              workers=max(1, resolve_workers(cfg.workers)))
        except FileExistsError as e:  # data.root holds something the generator did not write: never touched
            raise UserError(f"data.root: {e}; point data.root at a new or empty folder for the demo images, "
                            f"or set data.demo.enabled=false to train on this folder") from None
    barrier()


def resolve_val_resize(cfg: DataConfig, model_name: str | None) -> DataConfig:
    """cfg with data.val_interpolation: model replaced by the model's own filter (models.model_val_cfg) and, when
    data.val_resize is null, its resize floor(img_size / crop_pct), as timm's eval transform (the authors' fork,
    timm/data/transforms_factory.py:147); 256 for 224 at the paper models' crop_pct 0.875, as the default."""
    if cfg.val_interpolation != "model":
        return cfg
    if model_name is None:
        raise ValueError("data.val_interpolation: model needs the model's name (build_loaders(model_name=...))")
    from pgt_train.models import model_val_cfg
    interpolation, crop_pct = model_val_cfg(model_name)
    resize = cfg.val_resize or max(cfg.img_size, math.floor(cfg.img_size / crop_pct))
    return dataclasses.replace(cfg, val_interpolation=interpolation, val_resize=resize)


def build_loaders(cfg: DataConfig, *, num_classes: int, seed: int, dist: DistInfo, channels_last: bool,
                  model_name: str | None = None, dtype: torch.dtype = torch.float32, train_path: str = "auto"):
    """Returns (train_loader, val_loader) for data.loader: torchvision | nvjpeg | synthetic | dali.
    model_name resolves data.val_interpolation: model (resolve_val_resize). dtype: the images' dtype where the
    loader normalises on the device itself (nvjpeg, dali: float16 for fp16 autocast, no cast in torch); the CPU
    loaders' batches stay float32 (autocast casts them in the first layer) unless dtype is float64. train_path: data.loader torchvision's
    training decode and crop, folder.build_datasets's (auto; pil, the path it replaced, for comparisons)."""
    cfg = dataclasses.replace(resolve_val_resize(cfg, model_name), workers=resolve_workers(cfg.workers))
    batch = per_rank_batch(cfg.batch_size, dist.world_size, cfg.accum_steps)
    if cfg.loader == "dali":
        from pgt_train.data.dali import build_dali_loaders
        return build_dali_loaders(cfg, batch_size=batch, num_classes=num_classes, seed=seed, dist=dist,
                                  channels_last=channels_last,
                                  output_dtype=str(dtype).removeprefix("torch."))  # dali.OUTPUT_DTYPES
    from pgt_train.data.torch_loader import TorchLoader
    if cfg.loader == "synthetic":
        from pgt_train.data.synthetic import SyntheticImages
        train_set = SyntheticImages(cfg.train_size, num_classes=num_classes, img_size=cfg.img_size, seed=seed)
        val_set = SyntheticImages(cfg.val_size, num_classes=num_classes, img_size=cfg.img_size, seed=seed + 1)
    elif cfg.loader in ("torchvision", "nvjpeg"):
        kw = dict(num_classes=num_classes, img_size=cfg.img_size, val_resize=cfg.val_resize, crop_scale=cfg.crop_scale,
                  crop_ratio=cfg.crop_ratio, seed=seed, val_interpolation=cfg.val_interpolation,
                  train_crop=cfg.train_crop)
        if cfg.loader == "nvjpeg":  # workers read bytes; batches are decoded on dist.device (gpu_decode.py)
            from pgt_train.data.gpu_decode import build_encoded_datasets
            train_set, val_set = build_encoded_datasets(cfg.root, **kw)
        else:
            from pgt_train.data.folder import build_datasets
            train_set, val_set = build_datasets(cfg.root, train_path=train_path, **kw)
    else:
        raise ValueError(f"unknown data.loader '{cfg.loader}' (valid: torchvision, nvjpeg, dali, synthetic)")
    check_train_size(len(train_set), cfg)
    common = dict(batch_size=batch, rank=dist.rank, world_size=dist.world_size, seed=seed, workers=cfg.workers,
                  device=dist.device, channels_last=channels_last, skip_corrupt=cfg.skip_corrupt)
    loader_class = TorchLoader
    if cfg.loader == "nvjpeg":
        from pgt_train.data.gpu_decode import NvjpegLoader
        loader_class = NvjpegLoader
        common.update(decoder=cfg.decoder, dtype=dtype)
    else:  # normalised in float32 under autocast (its first layer casts), in float64 for a float64 model
        common.update(dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return loader_class(train_set, train=True, **common), loader_class(val_set, train=False, **common)
