"""Preemption: SIGTERM or SIGUSR1 (SLURM's warning signal) asks the run to checkpoint and exit.

The handler only records the request; the trainer acts on it after the current optimizer step, writes
last.pth and exits with EXIT_PREEMPTED, so `--resume auto` (e.g. after a SLURM requeue) continues
from the next batch. Under DDP the ranks must stop after the same step: they agree through an
all-reduce every `every` steps (run.log_interval: the trainer's one host sync point).
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import traceback

import torch

from pgt_train.dist import DistInfo, all_reduce_max

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; scripts/slurm requeues on it
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records SIGTERM/SIGUSR1 in the process that made it, from creation until restore(), which puts the
    previous handlers back.

    A process forked meanwhile (the demo generator's multiprocessing pool, while the run builds) inherits the
    handler, but for it the signal means what it meant before: Pool.terminate() SIGTERMs its workers and
    then waits for them, so a worker that only recorded it would hang the run forever."""

    def __init__(self):
        self.signum: int | None = None
        self.pid = os.getpid()
        # None: a handler not set from Python; SIG_DFL is what Python starts with for these two
        self.previous = {s: signal.signal(s, self._record) or signal.SIG_DFL for s in SIGNALS}

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _record(self, signum, _frame) -> None:
        if os.getpid() != self.pid:  # a forked child: the previous handler (default: exit), delivered again
            signal.signal(signum, self.previous[signum])
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def requested_by_any_rank(self, world: DistInfo) -> bool:
        """True on every rank once any rank received a signal (a collective when distributed). A rank the signal
        did not reach takes the signal's number from the others, so its log names it too."""
        if not world.is_distributed:
            return self.signum is not None
        agreed = int(all_reduce_max(torch.tensor([float(self.signum or 0)], device=world.device)).item())
        if agreed and self.signum is None:
            self.signum = agreed
        return agreed != 0

    def agreed_at_step(self, step: int, world: DistInfo, every: int) -> bool:
        """requested_by_any_rank, asked only every `every` steps when distributed: the ranks then stop after the
        same step, and the agreement costs one host sync per `every` steps."""
        if world.is_distributed and step % every:
            return False
        return self.requested_by_any_rank(world)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"


def ignore_in_worker(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: SIGTERM/SIGUSR1 from anyone but the trainer itself are ignored.

    SLURM (cgroup), torchrun (its rank's process group) and `kill -- -PGID` signal the workers too; dying
    there would make the trainer fail mid-step instead of saving. But the trainer's own shutdown (the
    DataLoader's, or multiprocessing's at interpreter exit after an uncaught exception) ends lingering
    workers with SIGTERM and then waits for them: a worker that ignored that would hang the exit forever.
    So the signals are blocked and a thread reads each one with its sender's pid: from the parent, exit;
    from anyone else, drop it.
    """
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # threads started later inherit the mask
    threading.Thread(target=_obey_parent_only, args=(parent,), name="pgt-worker-signals", daemon=True).start()
    sys.excepthook = functools.partial(_quiet_dropped_handoff, previous=sys.excepthook)


def _quiet_dropped_handoff(kind, error, trace, *, previous) -> None:
    """A worker hands each batch's shared memory to the trainer through multiprocessing's resource sharer,
    a thread that serves the file descriptor over a socket and reports any error with sys.excepthook. A
    Ctrl-C that reaches the trainer mid hand-off closes that socket: the batch is not wanted any more, and
    the trainer says in its own line that it was interrupted. So a connection lost in the sharer is not
    reported; any other error still is."""
    in_sharer = any(frame.f_code.co_filename.endswith(os.path.join("multiprocessing", "resource_sharer.py"))
                    for frame, _ in traceback.walk_tb(trace))
    if in_sharer and issubclass(kind, (ConnectionError, EOFError)):
        return
    previous(kind, error, trace)


@contextlib.contextmanager
def children_ignore_sigint():
    """Around the fork of loader workers: they inherit SIGINT ignored, so Ctrl-C (sent to the whole
    foreground process group) reaches only the trainer, which stops and shuts the workers down. Without
    it, a worker still starting up dies of it with a traceback. A Ctrl-C during the fork itself is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _obey_parent_only(parent: int) -> None:
    while True:
        received = signal.sigwaitinfo(SIGNALS)
        if received.si_pid == parent and received.si_signo == signal.SIGTERM:
            # Exit code 0: torch's SIGCHLD check in the trainer reports workers that die by a signal or a
            # non-zero code as a crash, which at this point would only add a second traceback.
            os._exit(0)
