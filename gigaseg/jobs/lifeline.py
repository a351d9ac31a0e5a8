"""Worker processes that end with their parent, even when the parent is killed with SIGKILL.

A killed parent runs no cleanup. An idle ``ProcessPoolExecutor`` worker then
waits on its task queue forever (it holds the queue's write end itself, so it
never reads an end of file), and multiprocessing's resource tracker waits for
every holder of its pipe, the workers included. :func:`die_with_parent`, a pool
initializer, ends a worker once its parent is gone; the resource tracker then
reads the end of its pipe and exits too.

This module imports nothing heavy: a worker unpickles its initializer before
its first task, so the watch starts before the task's imports (torch and the
rest take seconds), and a worker killed mid-import does not linger.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5  # how often a worker checks that its parent is alive


def die_with_parent(parent: int) -> None:
    """Pool initializer: start a daemon thread that ends this process once ``parent`` is gone.

    The thread polls the parent's pid; a worker busy in C code that holds the GIL
    (pydensecrf) ends when that call returns. Not Linux's ``PR_SET_PDEATHSIG``: it
    fires when the *thread* that started the worker ends, and a pool starts its
    workers from whichever thread submits first (in ``segment --refine``, a
    writer thread).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="gigaseg-lifeline", daemon=True).start()
