"""The PyTorch DataLoader path shared by the folder and synthetic sources.

Datasets yield uint8 CHW images; they travel to the device as uint8 (4x fewer bytes than float) and are
normalised there. Augmentation is seeded per sample from (seed, epoch, index): the sampler hands each
index to the workers together with its epoch, so the random crop of image i in epoch e is the same for
any number of workers, ranks, persistent workers or a resume in the middle of the epoch.
"""
from __future__ import annotations

import functools
import math
import sys
from contextlib import contextmanager
from typing import NamedTuple, Optional

import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN  # (0.485, 0.456, 0.406)
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD  # (0.229, 0.224, 0.225)
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from pgt_train.data.batch_pool import BatchPool
from pgt_train.errors import UserError
from pgt_train.preempt import children_ignore_sigint, ignore_in_worker

# Training replaces an unreadable image by a random readable one; this many misses in a row mean the data
# is broken rather than spotted with bad files (with half the files bad: 2^-32 per unreadable image).
REPLACEMENT_TRIES = 32
PREFETCH = 4  # batches each worker prepares ahead
POOL_SLOTS = 3  # reused shared-memory blocks per training worker (batch_pool.py): 3 x 38.5 MB at 256 x 224 px


class CorruptSample(NamedTuple):
    """What a dataset returns for a file it cannot decode; `replacement`: a readable (image, target) that
    takes its place in the batch, or None (the batch is one image shorter)."""
    path: str
    reason: str
    replacement: Optional[tuple] = None


def collate_skipping_corrupt(samples: list, pool: Optional[BatchPool] = None):
    """(images, targets, corrupt, lease): the readable samples and the replacements stacked (images into one of
    the pool's reused blocks where one is free; lease says which, for BatchPool.release), the corrupt ones as a
    list beside them. images and targets are None when nothing in the batch was readable."""
    corrupt = [s for s in samples if isinstance(s, CorruptSample)]
    readable = [s.replacement if isinstance(s, CorruptSample) else s for s in samples]
    readable = [s for s in readable if s is not None]
    if not readable:
        return None, None, corrupt, None
    if pool is None:
        return *default_collate(readable), corrupt, None
    images, lease = pool.stack([image for image, _ in readable])
    return images, default_collate([target for _, target in readable]), corrupt, lease


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, sample)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


@contextmanager
def sample_rng(seed: int):
    """torch's CPU RNG seeded for one sample's augmentation and restored afterwards, so the caller's stream
    (workers=0: the trainer's) is untouched. CPU only: torch.manual_seed would also reseed every GPU's."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class EpochIndexSampler(DistributedSampler):
    """DistributedSampler that yields (index, epoch) and can start part-way through an epoch.

    Each rank takes every world_size-th index of one seeded permutation; drop_last keeps the number
    of batches equal on all ranks so DDP never waits on a rank that ran out of data.
    """

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        return iter([(i, self.epoch) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ShardSampler(Sampler):
    """Validation: rank r takes indices r, r+W, r+2W, ... so every image is seen exactly once, no padding."""

    def __init__(self, n: int, *, rank: int, world_size: int):
        self.indices = range(rank, n, world_size)

    def __iter__(self):
        return iter((i, 0) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TorchLoader:
    """Iterable of (images, targets) on the device, normalised, in the model's memory format.

    len() is the number of micro-batches this rank yields in a full epoch.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, train: bool, rank: int, world_size: int, seed: int,
                 workers: int, device: torch.device, channels_last: bool, skip_corrupt: bool = True,
                 dtype: torch.dtype = torch.float32):
        self.train, self.skip_corrupt, self.corrupt_seen, self.workers = train, skip_corrupt, 0, workers
        if hasattr(dataset, "replace_unreadable"):  # training batches keep their size (see SeededImageFolder)
            dataset.replace_unreadable = train and skip_corrupt
        self.batch_size = batch_size
        self.sampler = (EpochIndexSampler(dataset, rank=rank, world_size=world_size, seed=seed) if train
                        else ShardSampler(len(dataset), rank=rank, world_size=world_size))
        # Training only: validation is a small share of the time, and a pool's blocks stay allocated while its loader
        # idles (the other loader's turn). A loader-bound run's batches are taken as soon as they are made, so a
        # worker needs 1-2 blocks; where it runs ahead (GPU-bound) a batch past POOL_SLOTS gets a new block.
        self.pool = BatchPool(workers, slots=POOL_SLOTS) if workers and train else None
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers, drop_last=train,
            collate_fn=functools.partial(collate_skipping_corrupt, pool=self.pool), worker_init_fn=ignore_in_worker,
            pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers else None)
        self.device, self.dtype = device, dtype  # float32, or float64 for a float64 model
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
        self.full_epoch_batches = (self.sampler.num_samples // batch_size if train
                                   else math.ceil(len(self.sampler) / batch_size))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        if self.train:
            self.sampler.set_epoch(epoch, skip=skip_batches * self.batch_size)

    def __len__(self) -> int:
        return self.full_epoch_batches

    def _report(self, corrupt: list[CorruptSample]) -> None:
        for sample in corrupt:
            if not self.skip_corrupt:
                raise UserError(f"corrupt image {sample.path} ({sample.reason}); remove or replace it, "
                                f"or set data.skip_corrupt=true to skip such files with a warning")
            if self.train and sample.replacement is None:
                raise UserError(f"unreadable image {sample.path} ({sample.reason}) and {REPLACEMENT_TRIES} "
                                f"random others too: check data.root (permissions, a broken disk or copy)")
            print(f"warning: skipped corrupt image {sample.path} ({sample.reason})", file=sys.stderr)
        self.corrupt_seen += len(corrupt)

    def take_corrupt_count(self) -> int:
        """Corrupt files met since the last call (the epoch summary reports them)."""
        count, self.corrupt_seen = self.corrupt_seen, 0
        return count

    def __iter__(self):
        if self.pool is not None:
            self.pool.next_iteration()  # before the DataLoader drops what an abandoned iteration left in flight
        with children_ignore_sigint():  # forks the workers the first time (persistent_workers)
            batches = iter(self.loader)
        for images, targets, corrupt, lease in batches:
            self._report(corrupt)
            if images is None:  # validation only (training replaces unreadable images): nothing to score
                continue
            images = images.to(self.device, non_blocking=True)
            # a new tensor (float), so the worker's block can take its next batch
            images = images.contiguous(memory_format=self.memory_format).to(self.dtype).sub_(self.mean).div_(self.std)
            if self.pool is not None:
                self.pool.release(lease)
            yield images, targets.to(self.device, non_blocking=True)
