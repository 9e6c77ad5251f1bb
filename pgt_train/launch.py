"""pgt-torchrun: torchrun, but a failed run ends the way a single process does.

    pgt-torchrun --nproc_per_node=4 -m pgt_train --config configs/resnet50_cosine_pgt.yaml ...

Plain torchrun turns every rank's exit code into 1 and adds a Python traceback (ChildFailedError), so a
config error shows as a traceback and a preempted run (exit 75, which scripts/slurm requeues on) as a
failure. Here the ranks' own one-line messages are what the user sees, and the exit code is the first
failing rank's: 2 bad input, 3 non-finite, 75 preempted. Arguments are torchrun's, unchanged.

Signals to the launcher itself (what SLURM's srun, `docker stop` and `kill PID` send):
- SIGTERM and SIGUSR1 are forwarded to every rank's process group and the launcher keeps waiting: the ranks
  stop after the same step, rank 0 writes last.pth, they exit 75 and so does pgt-torchrun. Plain torchrun
  forwards SIGTERM too, but then raises: a traceback and exit 1 although the ranks saved. SIGUSR1 would kill
  plain torchrun outright (its default action), orphaning the ranks.
- SIGINT, SIGHUP, SIGQUIT: torchrun's own handling (the ranks are stopped; exit 130 for Ctrl-C).
When a rank fails and torchrun ends the others, one that is stopped (SIGSTOP, state T) is killed at once:
it cannot act on SIGTERM, so torchrun would otherwise wait its whole --shutdown-timeout (30 s) for it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def worker_groups(parent: int) -> list[int]:
    """PIDs of `parent`'s children that lead their own process group: torchrun starts each rank in a new
    session (start_new_session), so these are the ranks (with their DataLoader workers in their groups)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == parent and int(fields[2]) == int(entry):
            found.append(int(entry))
    return found


def forward(signum, _frame) -> None:
    """Signal handler: the same signal to every rank's process group; the agent keeps monitoring them."""
    for pid in worker_groups(os.getpid()):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass


def is_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def kill_stopped_on_close() -> None:
    """Wraps torchrun's per-rank close(death_sig): a stopped rank gets SIGKILL instead of a SIGTERM it would
    hold pending forever. Skipped (torchrun's own behaviour) if torch's internals moved."""
    try:
        from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as sh
    except ImportError:
        return
    original = getattr(sh.SubprocessHandler, "close", None)
    if original is None or getattr(original, "_pgt_wrapped", False):
        return

    def close(self, death_sig=None):
        if self.proc.poll() is None and is_stopped(self.proc.pid):
            death_sig = signal.SIGKILL
        return original(self, death_sig)

    close._pgt_wrapped = True
    sh.SubprocessHandler.close = close


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # the agent's own "failed (exitcode: N) local_rank: ..." line repeats what the rank already said
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    names = {s.name for s in FORWARDED}
    args.signals_to_handle = ",".join(s for s in args.signals_to_handle.split(",") if s.strip() not in names)
    for s in FORWARDED:
        signal.signal(s, forward)
    kill_stopped_on_close()
    try:
        run(args)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by signal N: 128 + N
    except SignalException as e:  # SIGINT/SIGHUP/SIGQUIT: torchrun stopped the ranks
        return 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
