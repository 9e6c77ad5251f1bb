"""One writer per run folder: an exclusive POSIX lock (fcntl.lockf) on <run.dir>/.pgt-train.lock, held while a
process writes there.

    with RunLock(run_dir) as lock:  # a second writer: UserError naming the holder's PID, nothing written
        ...train...; lock.verify()  # at each log interval and before each checkpoint or summary write

The kernel drops the lock when its holder dies (SIGKILL included), so a lock is never stale and RunLock never
removes the lock file of a run folder. A lock belongs to an inode, not to a path: were the file removed or
replaced (a user, a cleanup script), a second writer would lock a new file at the same path. So a writer checks,
after taking the lock and at each verify(), that the path still names the inode it locked (device and inode);
when it does not, it locks the file now at the path, or stops (UserError) when another writer holds that one.
A POSIX lock, not a flock: it belongs to the process, so loader workers forked from the trainer do not inherit it
(with flock they held it after a SIGKILL of the trainer until they noticed and exited, refusing a quick resume).
It is released when this process closes any descriptor of the lock file: only RunLock opens it.
Readers (pgt-report, export) never take it: every file they read is replaced by an atomic rename.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from pgt_train.errors import UserError

LOCK_NAME = ".pgt-train.lock"


def holder_pid(path: Path) -> Optional[int]:
    """The PID holding a lock on `path`, from the kernel's /proc/locks (None where it cannot tell)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode_tail = f":{st.st_ino}"
    for line in lines:  # "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a "->" marks a waiter)
        fields = line.split()
        kind = next((k for k in ("POSIX", "FLOCK", "OFDLCK") if k in fields), None)
        if "->" in fields or kind is None:
            continue
        i = fields.index(kind)
        if len(fields) > i + 4 and fields[i + 4].endswith(inode_tail) and fields[i + 3].isdigit():
            return int(fields[i + 3])
    return None


def in_use_error(run_dir: Path, pid: Optional[int]) -> UserError:
    who = f"PID {pid}" if pid is not None else "another process"
    return UserError(f"run.dir {run_dir} is in use: {who} is writing there (it holds {LOCK_NAME}); wait for it "
                     f"to end or choose another run.dir (nothing was changed)")


def refuse_if_held(run_dir: Path) -> None:
    """Raises in_use_error where another process holds run_dir's lock now (a check without taking it)."""
    pid = holder_pid(Path(run_dir) / LOCK_NAME) if (Path(run_dir) / LOCK_NAME).exists() else None
    if pid is not None and pid != os.getpid():
        raise in_use_error(run_dir, pid)


def same_file(path: Path, fd: int) -> bool:
    """Whether `path` names the file open as `fd` (device and inode)."""
    try:
        st, mine = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class RunLock:
    """Context manager: creates run_dir (and its missing parents) if needed and locks its lock file.

    enabled=False (DDP ranks other than 0, which write nothing there) makes it a no-op. If this process created
    the folder and leaves it holding nothing but the lock file (it stopped on bad input), the folder is removed
    again, so a refused run leaves no trace.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / LOCK_NAME
        self.fd: Optional[int] = None
        self.created: list[Path] = []

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"run.dir {self.run_dir}: cannot create it ({e.strerror or e}); "
                            f"choose another run.dir") from None
        self.created = missing  # innermost first
        try:
            self._acquire()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _acquire(self) -> None:
        """Locks the file at self.path (created if missing) and sets self.fd; UserError if another process holds
        it. Retries while the path does not name the inode locked (removed or replaced meanwhile)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held
                pid = holder_pid(self.path)
                os.close(fd)
                raise in_use_error(self.run_dir, pid) from None
            if same_file(self.path, fd):
                self.fd = fd
                return
            os.close(fd)
            self.run_dir.mkdir(parents=True, exist_ok=True)  # a refused run may have removed its folder

    def verify(self) -> Optional[str]:
        """Checks that the lock file at the path is still the one this process holds. If it was removed or
        replaced, locks the file now there and returns a line saying so; raises UserError (the run must stop
        writing) if another writer holds that one. None: nothing happened (or not enabled)."""
        if self.fd is None or same_file(self.path, self.fd):
            return None
        if not self.run_dir.is_dir():  # the whole folder is gone: its checkpoints with it
            raise UserError(f"run.dir {self.run_dir} was removed while this run wrote there; this run stops "
                            f"without writing more")
        held = self.fd
        try:
            self._acquire()
        except UserError:
            pid = holder_pid(self.path)
            who = f"PID {pid}" if pid is not None else "another process"
            raise UserError(f"run.dir {self.run_dir}: its {LOCK_NAME} was removed or replaced and {who} now "
                            f"writes there; this run stops without writing more (its last checkpoint is kept)"
                            ) from None
        os.close(held)  # the old inode's lock; the new file's lock is held through self.fd
        return f"note: {self.path} was removed or replaced while this run wrote there; locked it again"

    def _remove_created(self) -> None:
        """Removes the folders this process created, if they hold nothing but the lock file (while it is held)."""
        if not self.created:
            return
        try:
            if [p.name for p in self.run_dir.iterdir()] in ([], [LOCK_NAME]):
                self.path.unlink(missing_ok=True)
                for folder in self.created:
                    folder.rmdir()
        except OSError:
            pass  # something else appeared: keep it

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self._remove_created()
        os.close(self.fd)  # releases the lock
        self.fd = None
