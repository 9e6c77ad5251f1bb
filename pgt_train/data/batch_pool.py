"""Reused shared-memory blocks for the images of each loader worker's batches.

Why: in a worker, DataLoader's default_collate stacks every batch into a new shared-memory block, and the new
block's pages are faulted in one by one: 120 µs per 224 px image, 8 % of a CPU-decoding worker's time
(docs/speed.md), plus the main process mapping each block anew. Here each worker keeps up to `slots` blocks and
stacks a batch into a free one (8 µs per image): on JPEGs one worker went from 0.64 to 0.69 of the decoder's own
rate, and each of two from 0.52 to 0.56 (medians of 8 interleaved rounds, this project's 2-core VM, 2026-12-06).

When a block is free (holder[w, k] is 0 for free, else 1 + the iteration in which worker w filled slot k):
  * the main process released it (release(), after copying the images out: TorchLoader normalises into a new
    tensor, or the pin-memory thread copied them into pinned memory), or
  * it was filled before the current iteration began (next_iteration(), called by the consumer before each new
    DataLoader iteration: DataLoader drops the batches of an abandoned iteration without handing them over).
With no free block (a consumer that keeps batches without releasing them, such as a loop over the raw
DataLoader) the batch goes to a new block, as default_collate does: never a wait, never an overwrite of a batch
the main process may still read. `fresh` counts those batches.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch
from torch.utils.data import get_worker_info

Lease = Optional[tuple[int, int]]  # (worker id, slot) of a batch in a reused block; None: nothing to release


class BatchPool:
    """Made in the main process before the workers start (its counters are shared memory); blocks are made in
    each worker at first use."""

    def __init__(self, workers: int, slots: int):
        self.holder = torch.zeros((max(1, workers), slots), dtype=torch.int64).share_memory_()
        self.iteration = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.fresh = torch.zeros(max(1, workers), dtype=torch.int64).share_memory_()  # batches given new blocks
        self.blocks: dict[int, torch.Tensor] = {}  # in a worker: slot -> its uint8 shared-memory block
        self._fence = threading.Lock()  # see release()

    def __getstate__(self):  # a worker started by spawn or forkserver gets the shared counters, no lock
        return {k: v for k, v in self.__dict__.items() if k != "_fence"}

    def __setstate__(self, state):
        self.__dict__.update(state, _fence=threading.Lock())

    def stack(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, Lease]:
        """(N, *shape) stack of `images` and its lease: in a worker, into a free reused block if there is one."""
        info = get_worker_info()
        if info is None:  # workers=0: the batch stays in this process
            return torch.stack(images), None
        slot = self._free_slot(info.id)
        if slot is None:
            self.fresh[info.id] += 1
            out = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype).share_memory_()
            return torch.stack(images, out=out), None
        block = self.blocks.get(slot)
        if block is None or block.dtype != images[0].dtype or block.shape[1:] != images[0].shape \
                or block.shape[0] < len(images):
            block = self.blocks[slot] = torch.empty((len(images), *images[0].shape),
                                                    dtype=images[0].dtype).share_memory_()
        self.holder[info.id, slot] = int(self.iteration) + 1
        return torch.stack(images, out=block[:len(images)]), (info.id, slot)

    def _free_slot(self, worker: int) -> Optional[int]:
        row, current = self.holder[worker].tolist(), int(self.iteration)
        return next((k for k, held in enumerate(row) if held == 0 or held - 1 < current), None)

    def release(self, lease: Lease) -> None:
        """The main process is done with this batch's block (its images were copied out)."""
        if lease is not None:
            # The lock's acquire and release are full memory barriers: the copy's reads of the block complete
            # before the worker can see the slot free (x86 orders them anyway; aarch64 need not).
            with self._fence:
                self.holder[lease] = 0

    def next_iteration(self) -> None:
        """Before a new DataLoader iteration: blocks of earlier iterations are free once their batches are dropped."""
        with self._fence:
            self.iteration += 1
