"""Work made ahead in forked processes, handed back in order.

Every clip the data code makes is a pure function of its seed or index, so rendering in a pool instead
of in the caller changes when a batch is made, never what it holds: training and caches stay the same.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator

import torch


def _init_worker(parent: int) -> None:
    """One torch thread, and on Linux the kernel's promise to end this worker when its parent dies (a
    SIGKILLed trainer had left its workers blocked forever, adopted by init)."""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the promise was made
            os._exit(1)


def ordered_map(fn: Callable, items: Iterable, workers: int, ahead: int = 2) -> Iterator:
    """``fn(item)`` for each item, in order; with ``workers > 1`` computed by that many forked processes,
    at most ``ahead`` results per worker waiting (``items`` may be endless). Each worker uses one torch
    thread: the pool is the parallelism. Results cross processes by pickling, so return numpy, not tensors.
    Without ``fork`` (Windows, macOS's default) or with ``workers <= 1`` it runs in the caller."""
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        yield from map(fn, items)
        return
    # The parent's cyclic garbage is freed here, not in the forks: a video decode leaves FFmpeg scalers whose
    # slice threads a forked worker does not have, and freeing one there waited on them for ever (a CI run hung
    # in a cache test; `python -c` reproducer: read_video_fitted, then ordered_map with gc in the workers).
    gc.collect()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        todo = iter(items)
        waiting = deque(pool.submit(fn, item) for item in islice(todo, ahead * workers))
        while waiting:
            result = waiting.popleft().result()
            for item in islice(todo, 1):  # keep the pool busy: one new item per result taken
                waiting.append(pool.submit(fn, item))
            yield result
