"""The contract every data source implements (torchvision folder, synthetic, DALI, GPU decode)."""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import torch

from pgt_train.config import DataConfig
from pgt_train.errors import UserError


@runtime_checkable
class Loader(Protocol):
    """Iterable of (images, targets) already on the device: images (B, 3, H, W) float, normalised, in the
    model's memory format; targets (B,) int64, where -1 marks validation padding that metrics ignore."""

    workers: int  # CPU workers (processes, or DALI's threads) that prepare its batches; 0: the training process

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int:
        """Micro-batches this rank yields in a full epoch."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Reshuffles for `epoch` (0-based) and skips the first `skip_batches` micro-batches (mid-epoch resume)."""

    def take_corrupt_count(self) -> int:
        """Unreadable files skipped since the last call (the epoch's summary row reports them)."""


def check_train_size(n_images: int, cfg: DataConfig) -> None:
    """An epoch must hold at least one optimizer step: one global batch (all ranks, all micro-batches)."""
    if n_images < cfg.batch_size:
        raise UserError(f"the training set has {n_images} images, fewer than one global batch "
                        f"({cfg.batch_size}); lower data.batch_size")
