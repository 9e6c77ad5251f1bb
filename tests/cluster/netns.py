"""Hosts on one machine for tests: network namespaces joined by a veth pair (iproute2, root only).

    with NetnsHosts(2) as hosts:          # namespaces pgt<pid>h0, pgt<pid>h1: 10.77.0.1 and 10.77.0.2 on a /24
        proc = hosts.popen(0, ["pgt-torchrun", ...], env=...)   # in its own session, inside host 0
        hosts.kill(1)                     # SIGKILL every process in host 1's namespace: a host lost

Each namespace has its loopback up and one end of the veth pair (`veth<i>`), created inside the namespace so
nothing is added to the machine's own interfaces. The filesystem is shared (one run folder for all hosts, as on
a cluster's shared storage); hostnames resolve to 127.0.0.1, so torchrun needs --local-addr and gloo
GLOO_SOCKET_IFNAME. Exit removes exactly the namespaces made here, after killing what runs in them (every process
there was started by this object), even when the test failed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Optional

SUBNET = "10.77.0"  # private to these namespaces: nothing outside them sees it


def unavailable_reason() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class NetnsHosts:
    def __init__(self, count: int = 2):
        assert 2 <= count <= 2, "one veth pair: two hosts"
        self.names = [f"pgt{os.getpid()}h{i}" for i in range(count)]
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def ifname(self, i: int) -> str:
        return f"veth{i}"

    def __enter__(self) -> "NetnsHosts":
        try:
            for name in self.names:
                ip("netns", "add", name)
                self.made.append(name)
                ip("-n", name, "link", "set", "lo", "up")
            a, b = self.names
            ip("link", "add", "veth0", "netns", a, "type", "veth", "peer", "name", "veth1", "netns", b)
            for i, name in enumerate(self.names):
                ip("-n", name, "addr", "add", f"{self.addr(i)}/24", "dev", self.ifname(i))
                ip("-n", name, "link", "set", self.ifname(i), "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def popen(self, i: int, cmd: list[str], **kwargs) -> subprocess.Popen:
        """`cmd` inside host i (`ip netns exec` execs it: the Popen's pid is cmd's), in a new session."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[i], *cmd], start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def pids(self, i: int) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True, text=True, timeout=30)
        return [int(p) for p in out.stdout.split()]

    def kill(self, i: int) -> list[int]:
        """SIGKILL every process in host i's namespace (all started by this object); returns their pids."""
        pids = self.pids(i)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def __exit__(self, *exc) -> None:
        for i, name in enumerate(self.names):
            if name in self.made:
                self.kill(i)
        for proc in self.procs:  # reap them (their pipes are the caller's)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for name in list(self.made):
            for _ in range(50):  # the namespace goes once its last process is gone
                if subprocess.run(["ip", "netns", "del", name], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            self.made.remove(name)
