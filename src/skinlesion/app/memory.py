"""Run the app's model work on ONE long-lived thread, so resident memory stays that of one request.

Gradio runs each request on a worker thread from a pool, and glibc gives threads their own malloc arenas.
What a request frees (the activations of the TTA forward and the CAM backward) stays in its thread's arena
for reuse, so with a fresh worker thread per request resident memory climbs until there are 8 arenas per
core. Measured in-process on the shipped ensemble (`Predictor.explain` of a 600 x 450 image, 2-core VM):
1.38 GB after 20 calls on one thread, 2.67 GB after 30 calls on 30 fresh threads. Returning the free pages
after each call (glibc's `malloc_trim`) brought it to 1.02 GB but made every request about 0.15 s slower,
since the next one faults the same pages back in; `MALLOC_ARENA_MAX` would have to be set before Python
starts, which a Space does not let the app do. One inference thread costs nothing: CAM requests are
serialised anyway (`Predictor` holds a lock around the hooks), and two CPU cores gain nothing from two
concurrent forwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


@functools.cache
def _inference_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="skinlesion-inference")


def on_inference_thread(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` run on the app's one inference thread; its result, or its exception re-raised."""
    return _inference_thread().submit(fn, *args, **kwargs).result()
