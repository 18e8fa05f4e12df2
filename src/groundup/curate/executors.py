"""Run shard tasks: in local processes (default) or on a Ray cluster, behind one interface.

An executor takes a function and a list of tasks and yields each task's result as it
completes (order is not kept; results carry their task index). A task writes its own
outputs and its done-marker, so what a killed run finished stays finished; the caller only
hands over the tasks without a valid marker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from groundup.processes import pool_context

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    workers: int

    def map_unordered(self, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]: ...


class LocalExecutor:
    """``workers`` processes on this machine (1: in this process, easiest to debug and profile)."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
            return
        with pool_context().Pool(min(self.workers, len(tasks)), maxtasksperchild=None) as pool:
            yield from pool.imap_unordered(fn, tasks, chunksize=1)


class RayExecutor:
    """One Ray task per shard task, on the cluster at ``address`` (None: start a local one).

    Ray is an optional extra (``pip install 'groundup[ray]'``); it is imported only here.
    """

    def __init__(self, workers: int | None = None, address: str | None = None):
        try:
            import ray
        except ImportError as e:
            raise ImportError("the Ray executor needs Ray: pip install 'groundup[ray]'") from e
        self._ray = ray
        self.address = address
        self.workers = workers or 0
        self._started = False

    def _init(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                      "include_dashboard": False, "logging_level": logging.WARNING}
            if self.address:
                kwargs["address"] = self.address
            elif self.workers:
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
            self._started = True
        if not self.workers:
            self.workers = int(ray.cluster_resources().get("CPU", 1))

    def map_unordered(self, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[Any]:
        if not tasks:
            return
        self._init()
        ray = self._ray
        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(task) for task in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, workers: int | None = None, ray_address: str | None = None) -> Executor:
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, ray_address)
    raise ValueError(f"unknown executor {kind!r} (choose from {', '.join(EXECUTORS)})")
