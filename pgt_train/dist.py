"""torchrun environment, rank helpers and metric reductions.

A single process needs no torchrun: without WORLD_SIZE in the environment this is a world of one and
every helper degrades to a no-op, so the trainer has one code path for one and many processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local_rank> when CUDA is present, else cpu."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(requested_device: str = "auto") -> DistInfo:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                 device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over ranks (in place, returned for chaining); identity in a world of one."""
    if tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if tdist.is_initialized():
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (e.g. 'stop now' after a signal on one rank)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_max(t).item())


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()
