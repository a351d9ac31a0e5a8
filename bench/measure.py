"""Run measurements in worker processes; interleave pairs and keep the best of each.

The machine is shared and noisy, so every comparison is a ratio measured in
one run: the engines of a comparison take turns (A, B, A, B, ...) and each
keeps its fastest repetition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH-RESULT "


@dataclass
class Measurement:
    """One engine's best repetition: seconds, pixels, tiles, peak RSS (or an error)."""

    engine: str
    seconds: float = float("inf")
    pixels: int = 0
    tiles: int = 0
    peak_rss_mb: float = 0.0
    error: str | None = None
    runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mpix_per_s(self) -> float:
        return self.pixels / 1e6 / self.seconds if self.pixels and self.seconds < float("inf") else 0.0

    def keep(self, result: dict[str, Any]) -> None:
        """Fold in one repetition: the best time, the largest peak."""
        self.peak_rss_mb = max(self.peak_rss_mb, result.get("peak_rss_mb", 0.0))
        if "error" in result:
            self.error = result["error"]
            return
        self.runs.append(result["seconds"])
        if result["seconds"] < self.seconds:
            self.seconds, self.pixels, self.tiles = result["seconds"], result["pixels"], result["tiles"]
            self.extra = {k: v for k, v in result.items() if k not in ("seconds", "pixels", "tiles")}


def run_worker(
    engine: str,
    params: dict[str, Any],
    *,
    threads: int,
    memory_limit_mb: int | None = None,
    inline: bool = False,
) -> dict[str, Any]:
    """One measurement in a fresh process; its result dict (with ``error`` on failure).

    ``inline`` runs it in this process instead (no memory cap, and the peak RSS
    is this process's): quick enough for the smoke test, meaningless for memory.
    """
    if inline:
        return run_inline(engine, params, threads=threads)
    request = {"engine": engine, "threads": threads, "params": params, "memory_limit_mb": memory_limit_mb}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.worker", json.dumps(request)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if lines:
        return json.loads(lines[-1][len(MARK) :])
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode < 0 or "MemoryError" in proc.stderr:
        return {"error": f"killed ({tail[:200]})"}
    return {"error": tail[:300]}


def run_inline(engine: str, params: dict[str, Any], *, threads: int) -> dict[str, Any]:
    import torch

    from bench.engines import ENGINES
    from bench.worker import peak_rss_mb

    torch.set_num_threads(threads)
    return {**ENGINES[engine](**params), "peak_rss_mb": peak_rss_mb()}


def interleaved(
    runs: dict[str, tuple[str, dict[str, Any]]],
    *,
    repeats: int,
    threads: int,
    memory_limit_mb: int | None = None,
    inline: bool = False,
) -> dict[str, Measurement]:
    """Run each named ``(engine, params)`` ``repeats`` times in turn; the best of each.

    An engine that fails is not run again.
    """
    best = {name: Measurement(engine) for name, (engine, _) in runs.items()}
    for _ in range(repeats):
        for name, (engine, params) in runs.items():
            if best[name].error is None:
                result = run_worker(engine, params, threads=threads, memory_limit_mb=memory_limit_mb, inline=inline)
                best[name].keep(result)
    return best
