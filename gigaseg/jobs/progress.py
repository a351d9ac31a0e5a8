"""One progress bar for every long command: done / total, rate and ETA, on a terminal only.

``segment`` advances it per tile row (a one-block scene moves row by row),
``run`` per finished block, ``refine`` per refined block and ``export`` per
written chunk row (``train`` has its own per-step bar). The bar shows on stderr only when it
is asked for *and* the stream is a terminal; otherwise :meth:`Progress.advance`
still counts (tests read :attr:`Progress.done`) but nothing is printed, so logs
and captured output stay clean.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any, TextIO

from tqdm import tqdm


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an open terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


class Progress:
    """A thread-safe bar over ``total`` units (pixels, voxels, blocks, steps).

    ``unit`` "pix" shows Mpix/s, "vox" Mvox/s (large counts are scaled); the
    remaining time is tqdm's estimate from a slowly moving average of the rate,
    so start-up (workers loading the model) fades from it. ``initial`` units
    count as done at start (resumed work) and are left out of the rate.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str = "pix",
        enabled: bool = False,
        initial: int = 0,
        file: TextIO | None = None,
    ) -> None:
        self.desc = desc
        self.total = int(total)
        self.initial = self.done = int(initial)
        self.updates = 0  # calls to advance, for tests
        self._lock = threading.Lock()
        stream = file if file is not None else sys.stderr
        self.shown = bool(enabled) and is_terminal(stream)
        self._bar: tqdm | None = None
        if self.shown:
            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=desc,
                unit=unit,
                unit_scale=unit in ("pix", "vox"),
                smoothing=0.1,  # a slow moving average: steady, yet forgets start-up (loading the model)
                mininterval=0.2,
                leave=False,
                file=stream,
                **sized(stream),
            )

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done (from any thread)."""
        with self._lock:
            self.done += int(n)
            self.updates += 1
            if self._bar is not None:
                self._bar.update(int(n))

    def note(self, text: str, *, refresh: bool = False) -> None:
        """A short status after the bar (a loss, scenes done); shown only on a terminal.

        It shows with the next update, or at once with ``refresh``.
        """
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(text, refresh=refresh)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sized(stream: Any) -> dict[str, int]:
    """Fixed columns and rows for a terminal that reports no size (``script``, some containers).

    tqdm sizes its bar from the terminal and prints nothing at all in one of 0 rows.
    """
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return {}
    return {} if columns > 0 and lines > 0 else {"ncols": 100, "nrows": 24}


def unit_of(ndim: int) -> str:
    """The unit of a scene with ``ndim`` axes: pixels in 2-D, voxels in 3-D."""
    return "vox" if ndim == 3 else "pix"
