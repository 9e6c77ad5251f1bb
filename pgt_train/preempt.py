"""Preemption: SIGTERM or SIGUSR1 (SLURM's warning signal) asks the run to checkpoint and exit.

The handler only records the request; the trainer acts on it after the current optimizer step, writes
last.pth and exits with EXIT_PREEMPTED, so `--resume auto` (e.g. after a SLURM requeue) continues
from the next batch. Under DDP the ranks must stop after the same step: they agree through an
all-reduce every `sync_every` steps (run.log_interval: the trainer's one host sync point).
"""
from __future__ import annotations

import signal

import torch

from pgt_train.dist import DistInfo, broadcast_flag

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; scripts/slurm requeues on it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        for s in SIGNALS:
            signal.signal(s, self._record)

    def _record(self, signum, _frame) -> None:
        self.signum = signum

    def agreed(self, step: int | None, info: DistInfo, device: torch.device, sync_every: int = 1) -> bool:
        """True on every rank at the same step once any rank received a signal (step None: check now)."""
        if not info.enabled:
            return self.signum is not None
        return (step is None or step % sync_every == 0) and broadcast_flag(self.signum is not None, device)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"


def ignore_in_worker(_worker_id: int = 0) -> None:
    """DataLoader workers leave the signals to the trainer, which shuts them down after saving."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
