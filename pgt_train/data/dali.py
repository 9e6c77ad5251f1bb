"""NVIDIA DALI loader for ImageNet-layout folders: the same protocol as TorchLoader (torch_loader.py).

Decoding runs on the GPU (device='mixed', nvJPEG) or, with data.dali_device=cpu, in a CPU-only
pipeline whose outputs are copied to dist.device. Class indices are torchvision ImageFolder's (sorted
folder names; the file list is built with its own helpers), so checkpoints move between loaders.

Sharding. fn.readers.file splits its file list into W contiguous shards, shard r holding entries
[r*N//W, (r+1)*N//W). With pad_last_batch every shard is padded (repeating its last sample) to
ceil(N/W) entries and then to whole batches, so every rank's reader epoch is the same number of
batches, `ceil(ceil(N/W) / b)`, and the next epoch starts on a batch boundary. One pass of this
loader is one reader epoch:
  train: random_shuffle (DALI's buffer) over a file list shuffled once with the run seed (sorted by
         class, it would leave a shuffle buffer one class deep); the shards rotate over the ranks
         every epoch (stick_to_shard=False), so each epoch is one partition of the training set.
         Only the first floor(floor(N/W) / b) batches are yielded, all real samples and as many on
         every rank (DDP needs that); the rest of the reader epoch is read and dropped.
  val:   in file order, each rank sticks to its shard; entries past the shard's real length are
         padding and get target -1, which engine.evaluate ignores: every image counts once.
Augmentation follows the torchvision path (RandomResizedCrop with data.crop_scale/crop_ratio,
horizontal flip; val: resize the shorter side, center crop) but draws from DALI's own generator,
so it is not sample-for-sample identical to it. DALI cannot seek: a mid-epoch resume reads and drops
the batches already trained on, once, to keep the shards aligned.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pgt_train.config import DataConfig
from pgt_train.data.base import check_train_size
from pgt_train.data.torch_loader import IMAGENET_MEAN, IMAGENET_STD
from pgt_train.dist import DistInfo
from pgt_train.errors import UserError

READER = "Reader"
# Share of the JPEGs nvJPEG's hardware decoder (A100/H100 NVJPG engines) takes in the mixed decoder, the rest going
# to its CUDA decoder: DALI's documented default, stated here; not tuned, as the GPU path has never run.
HW_DECODER_LOAD = 0.65
OUTPUT_DTYPES = ("float32", "float16")  # crop_mirror_normalize's output: the model's input dtype


def image_files(split_dir: Path) -> tuple[list[str], list[int]]:
    """(paths, class indices) exactly as torchvision's ImageFolder lists them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    _, class_to_idx = find_classes(str(split_dir))
    try:
        samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:  # a class folder without any image file
        raise UserError(f"data.root: {e}") from None
    return [p for p, _ in samples], [c for _, c in samples]


def shard_range(n: int, shard: int, shards: int) -> tuple[int, int]:
    """DALI's split of n file entries: shard r reads [r*n//W, (r+1)*n//W)."""
    return shard * n // shards, (shard + 1) * n // shards


def build_pipeline(files, labels, *, train: bool, cfg: DataConfig, batch_size: int, seed: int, dist: DistInfo,
                   gpu: bool, channels_last: bool, output_dtype: str = "float32"):
    """Train: decodes only a random crop's region (image_random_crop), resizes it, flips and normalises; val:
    decode, resize, center crop. Out: normalised `output_dtype` batches, NHWC with channels_last (else NCHW)."""
    from nvidia.dali import fn, pipeline_def, types
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"unknown DALI output dtype {output_dtype!r} (valid: {', '.join(OUTPUT_DTYPES)})")
    hw = dict(hw_decoder_load=HW_DECODER_LOAD) if gpu else {}  # mixed decoder only

    @pipeline_def(batch_size=batch_size, num_threads=max(1, cfg.workers), seed=seed + 1000 * dist.rank,
                  device_id=dist.device.index if gpu else None, prefetch_queue_depth=2)
    def pipeline():
        jpegs, targets = fn.readers.file(
            files=files, labels=labels, shard_id=dist.rank, num_shards=dist.world_size, random_shuffle=train,
            stick_to_shard=not train, pad_last_batch=True, name=READER)
        decoder = "mixed" if gpu else "cpu"
        if train:
            images = fn.decoders.image_random_crop(
                jpegs, device=decoder, output_type=types.RGB, random_area=list(cfg.crop_scale),
                random_aspect_ratio=list(cfg.crop_ratio), num_attempts=10, **hw)
            images = fn.resize(images, resize_x=cfg.img_size, resize_y=cfg.img_size, antialias=True)
            mirror, crop = fn.random.coin_flip(probability=0.5), None
        else:
            images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **hw)
            interp = types.INTERP_CUBIC if cfg.val_interpolation == "bicubic" else types.INTERP_LINEAR
            images = fn.resize(images, resize_shorter=cfg.val_resize or round(cfg.img_size * 256 / 224),
                               interp_type=interp, antialias=True)
            mirror, crop = 0, (cfg.img_size, cfg.img_size)
        # HWC permuted to NCHW on the torch side is channels_last memory without a copy
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if output_dtype == "float16" else types.FLOAT, output_layout="HWC" if channels_last else "CHW", crop=crop, mirror=mirror,
            mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])
        return images, targets

    pipe = pipeline()
    pipe.build()
    return pipe


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copies a dense DALI batch (CPU or GPU) into a new torch tensor on `device`."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
    tensor = tensor_list.as_tensor()
    on_gpu = hasattr(tensor_list, "device_id")
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device if on_gpu else "cpu")
    feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device) if on_gpu else None)
    return out.to(device, non_blocking=True)


def undecodable(files, *, near: int, budget_s: float = 30.0) -> UserError:
    """The error for a file DALI could not decode, naming it: PIL tries the files nearest to position `near` of the
    reader's list first (val reads in order: the failing batch; train shuffles within a buffer around it)."""
    from pgt_train.data.folder import find_unreadable
    found, checked = find_unreadable(files, near=near, budget_s=budget_s)
    advice = ("DALI stops at an unreadable file (data.loader=torchvision skips and counts such files): remove or "
              "replace it, or train with data.loader=torchvision")
    if found is None:
        return UserError(f"data.loader=dali: DALI could not decode an image, and PIL read all {checked} of the "
                         f"{len(files)} files it checked near it; {advice}")
    return UserError(f"data.loader=dali: cannot decode {found}; {advice}")


class DaliLoader:
    """Iterable of (images, targets) on the device; len() = micro-batches per rank per epoch.

    Each pass reads one whole reader epoch (`reader_batches`) and yields its first `batches` (None: all).
    """

    def __init__(self, pipe, *, train: bool, batch_size: int, batches: int | None, device: torch.device,
                 channels_last: bool, files: tuple[str, ...] = ()):
        meta = pipe.reader_meta(READER)
        shards, n = meta["number_of_shards"], meta["epoch_size"]
        self.reader_batches = math.ceil(meta["epoch_size_padded"] // shards / batch_size)
        start, end = shard_range(n, meta["shard_id"], shards)
        self.shard_size = end - start  # real samples in this rank's shard; past it, padding
        self.shard_start, self.files = start, files  # the reader's file list: to name a file it cannot decode
        self.pipe, self.train, self.batch_size = pipe, train, batch_size
        self.workers = pipe.num_threads  # data.workers: DALI's CPU threads
        self.batches = self.reader_batches if batches is None else batches
        self.device, self.channels_last = device, channels_last
        self.position, self.skip = 0, 0  # batches read so far; batches to drop at the start of the next pass

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.skip = skip_batches

    def __len__(self) -> int:
        return self.batches

    def take_corrupt_count(self) -> int:
        """Always 0: DALI's decoder fails the pipeline on an unreadable file instead of skipping it."""
        return 0

    def _read(self):
        self.position += 1
        try:
            return self.pipe.run()
        except RuntimeError as e:  # DALI's message names the operator, never the file
            if "decoders" not in str(e):
                raise
            batch = (self.position - 1) % self.reader_batches
            raise undecodable(self.files, near=self.shard_start + batch * self.batch_size) from None

    def __iter__(self):
        while self.position % self.reader_batches:  # the last pass was left early: finish its reader epoch
            self._read()
        skip, self.skip = self.skip, 0
        for i in range(self.reader_batches):
            images, targets = self._read()
            if i < skip or i >= self.batches:
                continue  # trained on before a resume, or the dropped tail of a train epoch
            images, targets = to_torch(images, self.device), to_torch(targets, self.device).view(-1).long()
            if self.channels_last:
                images = images.permute(0, 3, 1, 2)  # NHWC storage, NCHW view: channels_last
            if not self.train:
                position = i * self.batch_size + torch.arange(self.batch_size, device=self.device)
                targets = targets.masked_fill(position >= self.shard_size, -1)  # padding counts nowhere
            yield images, targets


def build_dali_loaders(cfg: DataConfig, *, batch_size: int, num_classes: int, seed: int, dist: DistInfo,
                       channels_last: bool, output_dtype: str = "float32"):
    """(train_loader, val_loader) over <root>/train and <root>/val; batch_size is per rank and micro-batch.
    output_dtype float16: the pipeline emits the fp16 batch itself (for fp16 autocast runs; no cast in torch)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise UserError("data.loader=dali needs NVIDIA DALI: pip install 'pgt-train[dali]' "
                        "(nvidia-dali-cuda120)") from None
    from pgt_train.data.folder import check_layout
    root = Path(cfg.root).expanduser()
    check_layout(root, num_classes)
    device = cfg.dali_device or ("gpu" if dist.device.type == "cuda" else "cpu")
    if device == "gpu" and dist.device.type != "cuda":
        raise UserError("data.dali_device=gpu needs CUDA (run.device: cuda); use data.dali_device=cpu")
    loaders = []
    for split, train in (("train", True), ("val", False)):
        files, labels = image_files(root / split)
        n, w = len(files), dist.world_size
        if train:
            check_train_size(n, cfg)
            order = np.random.default_rng(seed).permutation(n)  # the same on every rank: shards stay disjoint
            files, labels = [files[i] for i in order], [labels[i] for i in order]
        elif n < w:
            raise UserError(f"{root / split} has {n} images, fewer than the {w} processes")
        pipe = build_pipeline(files, labels, train=train, cfg=cfg, batch_size=batch_size, seed=seed, dist=dist,
                              gpu=device == "gpu", channels_last=channels_last, output_dtype=output_dtype)
        loaders.append(DaliLoader(pipe, train=train, batch_size=batch_size, device=dist.device,
                                  batches=(n // w) // batch_size if train else None, channels_last=channels_last,
                                  files=tuple(files)))
    return tuple(loaders)
