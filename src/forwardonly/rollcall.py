"""Naming the rank that stopped a distributed run.

A collective that fails says only that it failed: gloo reports a closed
connection or a timeout, without telling which peer went away. When one fails,
every surviving rank reports to the rendezvous store (the TCP key-value store
that torchrun's agent, or rank 0 without torchrun, hosts) and waits up to
``grace_s`` for the others; the ranks that never report are the ones that died
or hung. At start-up each rank also leaves its host name and process id there,
so a survivor on the same host tells a process that has exited (died) from one
that is still running (hung). If the store itself is gone, its host is named
(rank 0, or the launcher).

The store is touched once at start-up and only after a failure, never on the
path of a healthy step.

Example::

    calls = RollCall.from_env(rank, world_size)      # after init_process_group
    ...                                              # a collective number 7 fails:
    calls.absent(7)   # 'rank 1 (pid 4242 on this host) is still running: it hangs'
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

from .io import process_alive


class RollCall:
    """Which ranks did not reach a failed collective (see the module docstring).

    Args:
        store: a ``torch.distributed.Store`` every rank can reach.
        rank, world_size: this process's rank and the group's size.
        grace_s: how long a survivor waits for the others to report after a failure (default 5 s).
        where: how to name the store in messages (``host:port``).
    """

    def __init__(self, store, rank: int, world_size: int, grace_s: float = 5.0, where: str = "the store"):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.grace_s, self.where = grace_s, where
        self.host = socket.gethostname()
        self.store.set(f"who/{rank}", json.dumps({"host": self.host, "pid": os.getpid()}))

    @classmethod
    def from_env(cls, rank: int, world_size: int, grace_s: float = 5.0) -> RollCall | None:
        """A roll call over the store at ``MASTER_ADDR:MASTER_PORT``, or None where there is none to reach."""
        import torch.distributed as dist

        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port:
            return None
        try:
            store = dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                                  timeout=datetime.timedelta(seconds=max(1.0, grace_s)))
            return cls(dist.PrefixStore("forwardonly/rollcall/", store), rank, world_size, grace_s,
                       where=f"{host}:{port}")
        except Exception:  # noqa: BLE001 - naming ranks is a courtesy; the run goes on without it
            return None

    def absent(self, failure: int) -> str:
        """Report this rank at failure number ``failure`` and describe the ranks that never reported."""
        try:
            self.store.set(f"failed/{failure}/{self.rank}", "1")
            missing = set(range(self.world_size)) - {self.rank}
            deadline = time.monotonic() + self.grace_s
            while missing:
                missing -= {r for r in missing if self.store.check([f"failed/{failure}/{r}"])}
                if not missing or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the store's host is gone
            return (f"the rendezvous store at {self.where} is unreachable: rank 0 (the store's host when started "
                    f"without torchrun) or the launcher has stopped")
        if not missing:
            return "every rank reached the failure (a network or backend fault, not a lost rank)"
        return "; ".join(self._describe(r) for r in sorted(missing))

    def _describe(self, rank: int) -> str:
        try:
            who = json.loads(self.store.get(f"who/{rank}"))
        except Exception:  # noqa: BLE001
            return f"rank {rank} did not report within {self.grace_s:g}s"
        if who["host"] != self.host:
            return f"rank {rank} (pid {who['pid']} on {who['host']}) did not report within {self.grace_s:g}s"
        if process_alive(who["pid"]):
            return f"rank {rank} (pid {who['pid']} on this host) is still running: it hangs"
        return f"rank {rank} (pid {who['pid']} on this host) has exited"

