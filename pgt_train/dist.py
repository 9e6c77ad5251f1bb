"""torchrun environment, rank helpers and metric reductions.

A single process needs no torchrun: without WORLD_SIZE in the environment this is a world of one and
every helper degrades to a no-op, so the trainer has one code path for one and many processes.

A lost or frozen rank: every collective waits at most `timeout_s` (run.dist_timeout_s), then raises. To say
WHICH rank went silent, each rank's Heartbeat thread counts up a key in torchrun's store (its own TCP client)
every beat; when a collective fails, lost_rank_line() reads the counts twice, a few beats apart, and names
the ranks whose count stood still (a SIGSTOPped or hung process, a dead host). Rank whose own exit code
and line explain the failure mark themselves as exited first and are not blamed.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

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
    def is_distributed(self) -> bool:
        """More than one process: collectives are real."""
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local_rank> when CUDA is present, else cpu."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(requested_device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPUs, gloo on CPUs; a collective that waits longer
    than timeout_s raises (NCCL: its watchdog aborts the process), and the heartbeat starts."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                 timeout=timedelta(seconds=timeout_s),
                                 device_id=device if device.type == "cuda" else None)
        Heartbeat.start(rank=rank, world_size=world_size, timeout_s=timeout_s)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown() -> None:
    Heartbeat.stop(exit_code=0)
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


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


class Heartbeat:
    """One daemon thread per rank: `beat/<rank>` += 1 every `interval` s in torchrun's store (MASTER_ADDR:PORT,
    hosted by the agent of the first node). A frozen process beats no more; an exited one leaves `exit/<rank>`."""
    current: Optional["Heartbeat"] = None

    def __init__(self, store, rank: int, world_size: int, interval: float, timeout_s: float):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.interval, self.timeout_s = interval, timeout_s
        self.done = threading.Event()
        store.set(f"who/{rank}", f"host {socket.gethostname()}, pid {os.getpid()}")
        threading.Thread(target=self._beat, name="pgt-heartbeat", daemon=True).start()

    @classmethod
    def start(cls, *, rank: int, world_size: int, timeout_s: float) -> None:
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not addr or not port:  # not started by torchrun: no store to beat into
            return
        interval = min(5.0, max(0.5, timeout_s / 10))
        prefix = (f"pgt-heartbeat/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
                  f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/")  # a restarted round counts afresh
        try:
            store = tdist.TCPStore(addr, int(port), is_master=False, wait_for_workers=False,
                                   timeout=timedelta(seconds=max(5.0, 2 * interval)))
            cls.current = cls(tdist.PrefixStore(prefix, store), rank, world_size, interval, timeout_s)
        except Exception:  # no second client possible: the timeout still holds, the line just names no rank
            cls.current = None

    @classmethod
    def stop(cls, exit_code: int) -> None:
        """This rank ends on its own (done, or with its own line): peers must not call it silent."""
        beat, cls.current = cls.current, None
        if beat is not None:
            beat.done.set()
            try:
                beat.store.set(f"exit/{beat.rank}", str(exit_code))
            except Exception:  # the store's host is gone: nobody is left to ask
                pass

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.store.add(f"beat/{self.rank}", 1)
            except Exception:  # store gone: the main thread's next collective fails and says so
                return

    def failed_ranks(self) -> list[int]:
        """Other ranks that ended with a failing exit code of their own: each printed its own line."""
        others = [r for r in range(self.world_size) if r != self.rank]
        return [r for r in others if self.store.check([f"exit/{r}"]) and self.store.get(f"exit/{r}") != b"0"]

    def silent_ranks(self) -> list[int]:
        """Ranks whose count did not move over three beats and that did not record an exit."""
        others = [r for r in range(self.world_size) if r != self.rank]
        before = {r: self.store.add(f"beat/{r}", 0) for r in others}
        time.sleep(3 * self.interval)
        return [r for r in others if self.store.add(f"beat/{r}", 0) == before[r]
                and not self.store.check([f"exit/{r}"])]


def is_collective_failure(error: BaseException) -> bool:
    """NCCL and the store raise DistError; gloo a RuntimeError naming gloo (a timeout, a closed connection)."""
    text = str(error)
    return isinstance(error, tdist.DistError) or isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection", "connection", "Timed out", "timed out"))


def lost_rank_line(error: BaseException) -> Optional[str]:
    """After a failed collective: one line naming the silent rank(s); "" (say nothing) if another rank is silent
    but a lower surviving rank says so, or if another rank ended with its own line (one line per job: a bad input
    or a lost run lock on rank 0, say); None if every rank is alive (the error is this rank's own)."""
    beat = Heartbeat.current
    if beat is None or not is_collective_failure(error):  # a bug here: no need to wait on the heartbeats
        return None
    Heartbeat.current = None  # this rank ends now; it says nothing more through the store
    beat.done.set()
    try:
        if beat.failed_ranks():
            return ""
        silent = beat.silent_ranks()
        who = {r: beat.store.get(f"who/{r}").decode() for r in silent}
    except Exception:  # the store went with the first node's agent
        addr = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        return (f"rank {beat.rank}: the rendezvous store at {addr} is gone: the first node (its torchrun "
                f"agent) was lost ({type(error).__name__})")
    if not silent:
        return None
    if min(r for r in range(beat.world_size) if r not in silent) != beat.rank:
        return ""
    names = "; ".join(f"rank {r} ({who[r]})" for r in silent)
    return (f"{names} of {beat.world_size} went silent (no heartbeat for {3 * beat.interval:.1f} s: frozen, "
            f"killed or its host lost); rank {beat.rank} stopped after waiting on it (run.dist_timeout_s="
            f"{beat.timeout_s:g})")
