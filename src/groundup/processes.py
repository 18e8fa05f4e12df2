"""The one choice of how worker processes start (tokenizing, curating, deduplicating)."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Sequence
from multiprocessing.context import BaseContext


def pool_context(*, preload: Sequence[str] = (), fork: bool = True) -> BaseContext:
    """The multiprocessing context for a pool of workers started from this process.

    ``fork`` where it is allowed (``fork``) and this process runs no other Python thread: workers start in
    milliseconds. Otherwise a fork server: a fresh process, without this one's threads, locks and signal
    handlers, that forks the workers quickly (``preload``: modules it imports once for all of them). A child
    forked while another thread holds a lock waits on it forever, and a server, an engine or a library's
    threads can be running in the caller (a notebook, a test session, a serving process). ``spawn`` where
    neither exists.
    """
    methods = mp.get_all_start_methods()
    if fork and "fork" in methods and threading.active_count() == 1:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        if preload:
            ctx.set_forkserver_preload(list(preload))
        return ctx
    return mp.get_context("spawn")
