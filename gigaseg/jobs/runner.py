"""Run a job on Dask: one task per output block, across every scene and worker.

The driver opens each scene once (validates it, creates or reopens its store)
and submits one task per pending block. A task writes only its own chunks and
its own ``blocks_done`` element, so Dask may retry it, or rerun it on another
worker after a crash, without locks. A scene is marked complete when its last
block lands; a scene that fails (bad input, a block failing every retry) is
reported and the other scenes go on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gigaseg.errors import GigasegError
from gigaseg.io.lock import StoreLock
from gigaseg.jobs.jobfile import Job, Slurm
from gigaseg.jobs.segment import (
    BlockRunner,
    SceneSpec,
    Summary,
    finish_scene,
    open_runner,
    pending_blocks,
    plan_checked,
)

REPORT_NAME = "gigaseg-run-report.json"


@dataclass
class SceneResult:
    input: str
    output: str
    status: str = "pending"  # done | failed
    error: str | None = None
    blocks: int = 0
    blocks_skipped: int = 0
    blocks_retried: int = 0
    seconds: float = 0.0
    mpix_per_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    worker_rss_mb: float = 0.0  # largest worker RSS when the scene finished


@dataclass
class RunReport:
    scenes: list[SceneResult]
    workers: int = 0
    seconds: float = 0.0
    peak_worker_rss_mb: dict[str, float] = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def ok(self) -> bool:
        return all(s.status == "done" for s in self.scenes)

    def table(self) -> str:
        rows = [f"{'scene':40} {'status':7} {'blocks':>7} {'skipped':>7} {'retried':>7} {'s':>7} {'Mpix/s':>7}"]
        for s in self.scenes:
            rows.append(
                f"{Path(s.input).name[:40]:40} {s.status:7} {s.blocks:7} {s.blocks_skipped:7} "
                f"{s.blocks_retried:7} {s.seconds:7.1f} {s.mpix_per_s:7.2f}"
            )
            if s.error:
                rows.append(f"    error: {s.error}")
        peak = max(self.peak_worker_rss_mb.values(), default=0.0)
        rows.append(
            f"{len(self.scenes)} scenes, {self.workers} workers, {self.seconds:.1f} s, peak worker RSS {peak:.0f} MB"
        )
        return "\n".join(rows)


# --- the block task, run on workers -----------------------------------------------------

_RUNNERS: dict[str, BlockRunner] = {}
MAX_OPEN_SCENES = 4


@dataclass(frozen=True)
class BlockFailed:
    """What a block task returns for a user error that a retry cannot fix (a truncated input)."""

    message: str


def block_task(spec: SceneSpec, index: tuple[int, ...], torch_threads: int) -> np.ndarray | BlockFailed:
    """Compute and write one block; the worker keeps the scene's source, model and store.

    A user error comes back as :class:`BlockFailed`: no retry, no worker traceback.
    One the operating system reported (a full or failing disk) is raised for Dask
    to retry, without a worker log entry: the run report names it if it persists.
    Any other error is raised, retried and logged as Dask does.
    """
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        return worker_runner(spec).run(index)
    except GigasegError as e:
        if not _from_the_system(e):
            return BlockFailed(str(e))
        _unlogged()
        raise


def _from_the_system(error: BaseException) -> bool:
    """True for an error that wraps an ``OSError`` with an errno (EIO, ENOSPC, ESTALE...)."""
    cause = error.__cause__ or error.__context__
    return isinstance(cause, OSError) and cause.errno is not None


_UNLOGGED: set[str] = set()  # keys of this worker's tasks that failed with a GigasegError


class _NoGigasegTracebacks(logging.Filter):
    """Drop ``distributed.worker``'s "Compute Failed" entry (with traceback) for those tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if str(record.msg).startswith("Compute Failed") and args and args[0] in _UNLOGGED:
            _UNLOGGED.discard(args[0])
            return False
        return True


def _unlogged() -> None:
    """Keep the current task's failure out of this worker's log."""
    from distributed import get_worker

    try:
        key = get_worker().get_current_task()
    except ValueError:  # not on a Dask worker
        return
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _NoGigasegTracebacks) for f in log.filters):
        log.addFilter(_NoGigasegTracebacks())
    _UNLOGGED.add(key)


def worker_runner(spec: SceneSpec) -> BlockRunner:
    spec = replace(spec, options=replace(spec.options, device=worker_device(spec.options.device)))
    runner = _RUNNERS.pop(spec.key, None) or open_runner(spec)
    _RUNNERS[spec.key] = runner  # most recently used last
    while len(_RUNNERS) > MAX_OPEN_SCENES:
        _RUNNERS.pop(next(iter(_RUNNERS))).source.close()
    return runner


def worker_device(device: str) -> str:
    """``auto`` on a multi-GPU node: the worker's own GPU, by worker number."""
    import torch

    if device != "auto" or not torch.cuda.is_available():
        return device
    try:
        from distributed import get_worker

        number = int(str(get_worker().name).rsplit("-", 1)[-1])
    except (ValueError, ImportError):
        number = 0
    return f"cuda:{number % torch.cuda.device_count()}"


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _retries_used(dask_scheduler: Any, keys: list[str], allowed: int) -> int:
    """Blocks that needed a retry: read off the scheduler's task states."""
    used = 0
    for key in keys:
        ts = dask_scheduler.tasks.get(key)
        if ts is not None and (ts.retries < allowed or ts.suspicious):
            used += 1
    return used


# --- the driver ----------------------------------------------------------------------------


@dataclass
class SceneState:
    spec: SceneSpec
    result: SceneResult
    summary: Summary | None = None
    runner: BlockRunner | None = None
    lock: StoreLock | None = None  # held by the driver for its block tasks, from creation to the end
    futures: dict[str, Any] = field(default_factory=dict)

    @property
    def block_pixels(self) -> int:
        """Pixels of an average block of this scene, for the progress bar's rate."""
        plan = self.runner.plan if self.runner else None
        return math.prod(plan.grid.shape) // plan.blocks.size if plan else 0

    left: int = 0
    started: float = field(default_factory=time.perf_counter)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def run_job(
    job: Job,
    *,
    base: Path,
    resume: bool = False,
    scheduler: str | None = None,
    slurm: Slurm | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> RunReport:
    """Run every scene of ``job`` and write the run report next to the outputs."""
    started = time.perf_counter()
    (base / job.output.dir).mkdir(parents=True, exist_ok=True)
    scenes: list[SceneState] = []
    try:
        for spec in job.scenes(resume=resume, base=base):
            scenes.append(prepare_scene(spec))
        report = RunReport([s.result for s in scenes])
        with dask_client(job, scheduler=scheduler, slurm=slurm, workers=workers) as (client, nworkers):
            report.workers = nworkers
            report.dashboard = client.dashboard_link
            if progress:
                print(f"gigaseg: Dask dashboard at {client.dashboard_link}", file=sys.stderr)
            _run_scenes(client, scenes, job, torch_threads(nworkers, scheduler=scheduler, slurm=slurm), progress)
            report.peak_worker_rss_mb = {str(k): v for k, v in client.run(_peak_rss_mb).items()}
    finally:
        for state in scenes:
            state.release()
    report.seconds = time.perf_counter() - started
    write_report(report, base / job.output.dir / REPORT_NAME)
    return report


def torch_threads(workers: int, *, scheduler: str | None, slurm: Slurm | None) -> int:
    """Torch threads per worker: its share of the cores (0: leave a remote worker's default)."""
    if slurm:
        return slurm.cores
    if scheduler:
        return 0
    return max(1, (os.cpu_count() or 2) // max(1, workers))


def prepare_scene(spec: SceneSpec) -> SceneState:
    """Open the scene and its store on the driver; a bad input fails this scene alone."""
    state = SceneState(spec, SceneResult(spec.input, spec.output))
    try:
        cpu = replace(spec, options=replace(spec.options, device="cpu"))
        planned = plan_checked(cpu)  # every check before the output is touched
        state.lock = StoreLock(spec.output).acquire()
        state.runner = open_runner(cpu, create=True, planned=planned)
    except GigasegError as e:
        state.result.status, state.result.error = "failed", str(e)
        state.release()
        return state
    runner = state.runner
    state.summary = Summary(spec.output, list(runner.predictor.card.classes), blocks=runner.plan.blocks.size)
    state.result.blocks = runner.plan.blocks.size
    return state


def gpu_workers(client: Any) -> bool:
    """True when the cluster's workers declare GPU resources (one per GPU)."""
    workers = client.scheduler_info()["workers"].values()
    return any("GPU" in w.get("resources", {}) for w in workers)


def _run_scenes(client: Any, scenes: list[SceneState], job: Job, threads: int, progress: bool) -> None:
    from distributed import as_completed

    retries = job.cluster.retries
    resources = {"GPU": 1} if gpu_workers(client) else None  # never two blocks on one GPU
    owner: dict[str, SceneState] = {}
    futures = []
    for n, state in enumerate(scenes):
        if state.runner is None:
            continue
        todo = pending_blocks(state.runner.store, state.runner.plan)
        state.result.blocks_skipped = state.result.blocks - len(todo)
        state.left = len(todo)
        for index in todo:
            key = f"gigaseg-block-{n}-{'-'.join(map(str, index))}-{os.getpid()}"
            future = client.submit(
                block_task, state.spec, index, threads, key=key, retries=retries, pure=False, resources=resources
            )
            futures.append(future)
            owner[key] = state
            state.futures[key] = future
        if not todo:
            _finish(state)
    total = len(futures)
    started, pixels = time.perf_counter(), 0
    with tqdm(total=total, disable=not progress, unit="block", desc="blocks") as bar:
        for future in as_completed(futures):
            state = owner[future.key]
            bar.update(1)
            pixels += state.block_pixels
            bar.set_postfix_str(f"{pixels / 1e6 / max(time.perf_counter() - started, 1e-9):.2f} Mpix/s")
            if state.result.status == "failed":
                continue
            if future.status == "error":
                _fail(client, state, future)
                continue
            value = future.result()
            if isinstance(value, BlockFailed):
                _fail(client, state, future, value.message)
                continue
            state.left -= 1
            if state.left == 0:
                keys = list(state.futures)
                state.result.blocks_retried = client.run_on_scheduler(_retries_used, keys=keys, allowed=retries)
                state.result.worker_rss_mb = max(client.run(_rss_mb).values(), default=0.0)
                _finish(state)


def _fail(client: Any, state: SceneState, future: Any, message: str | None = None) -> None:
    """Fail the scene with ``message`` (a user error) or the error its block kept raising."""
    if message is None:
        error = future.exception()
        detail = str(error) if isinstance(error, GigasegError) else f"{type(error).__name__}: {error}"
        message = f"block failed after retries: {detail}"
    state.result.status, state.result.error = "failed", message
    client.cancel([f for key, f in state.futures.items() if key != future.key])


def _finish(state: SceneState) -> None:
    assert state.runner is not None and state.summary is not None
    state.summary.blocks_skipped = state.result.blocks_skipped
    seconds = time.perf_counter() - state.started
    summary = finish_scene(state.runner.store, state.summary, seconds)
    state.runner.source.close()
    state.result.status = "done"
    state.result.seconds = seconds
    state.result.mpix_per_s = summary.pixels / 1e6 / seconds if seconds else 0.0
    state.result.counts = summary.counts


def write_report(report: RunReport, path: Path) -> Path:
    return _write_json(path, {**asdict(report), "ok": report.ok})


def write_error_report(path: Path, error: str) -> Path:
    return _write_json(path, {"ok": False, "error": error, "scenes": []})


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a reader polling for ``path`` never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


@contextmanager
def dask_client(
    job: Job, *, scheduler: str | None, slurm: Slurm | None, workers: int | None
) -> Iterator[tuple[Any, int]]:
    """A Dask client on an existing scheduler, a SLURM cluster, or a local cluster."""
    from distributed import Client

    settings = job.cluster
    if scheduler or settings.scheduler:
        with Client(scheduler or settings.scheduler) as client:
            yield client, len(client.scheduler_info()["workers"])
        return
    slurm = slurm or settings.slurm
    cluster = slurm_cluster(slurm) if slurm else local_cluster(workers or settings.workers)
    with cluster, Client(cluster) as client:
        expected = slurm.jobs if slurm else len(cluster.workers)
        client.wait_for_workers(expected, timeout=300)
        yield client, expected


def local_cluster(workers: int | None) -> Any:
    """One worker per GPU, else one per two cores; one task at a time per worker."""
    import torch
    from distributed import LocalCluster

    gpus = torch.cuda.device_count()
    n = workers or gpus or max(1, (os.cpu_count() or 2) // 2)
    resources = {"GPU": 1} if gpus else None
    return LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        resources=resources,
        dashboard_address=":0",
        memory_limit=0,
    )


def slurm_cluster(settings: Slurm) -> Any:
    """Workers as SLURM jobs (dask-jobqueue), each one Dask worker with one task slot."""
    import sys
    import tempfile

    from dask_jobqueue import SLURMCluster

    extra = ["--nthreads", "1"]
    if settings.lifetime:
        extra += ["--lifetime", settings.lifetime, "--lifetime-stagger", "2s"]
    if settings.gpus_per_job:
        extra += ["--resources", f"GPU={settings.gpus_per_job}"]
    cluster = SLURMCluster(
        queue=settings.queue,
        account=settings.account,
        cores=settings.cores,
        processes=1,
        memory=settings.memory,
        walltime=settings.walltime,
        python=sys.executable,
        worker_extra_args=extra,
        job_extra_directives=[f"--gpus={settings.gpus_per_job}"] if settings.gpus_per_job else [],
        log_directory=str(settings.log_directory or tempfile.mkdtemp(prefix="gigaseg-slurm-")),
        local_directory=tempfile.gettempdir(),
    )
    # adapt keeps the worker count up when a worker's walltime (--lifetime) ends mid-run
    cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster


def plan_lines(job: Job, *, base: Path, resume: bool) -> tuple[list[str], int]:
    """What ``gigaseg run --dry-run`` prints: per scene, the plan and what exists already.

    Also returns how many scenes would fail.
    """
    from gigaseg.jobs.plan import describe_scene

    lines, failing = [], 0
    for spec in job.scenes(resume=resume, base=base):
        try:
            lines.append(describe_scene(spec))
        except GigasegError as e:
            lines.append(f"{spec.input}: FAILS: {e}")
            failing += 1
    return lines, failing
