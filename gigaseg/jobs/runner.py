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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from gigaseg.errors import GigasegError, InputError
from gigaseg.io.export import export_mask
from gigaseg.io.location import exists, is_remote, location, remove_tree
from gigaseg.io.lock import StoreLock
from gigaseg.jobs.engine import BlockRunner
from gigaseg.jobs.jobfile import Cluster, Job, Slurm, job_message, join, load_job
from gigaseg.jobs.outputs import check_file_output
from gigaseg.jobs.progress import Progress
from gigaseg.jobs.scene import SceneSpec, load_predictor, open_runner
from gigaseg.jobs.segment import Summary, discard_if_empty, finish_scene, pending_blocks, plan_checked, refine_stage
from gigaseg.models.card import ModelCard
from gigaseg.models.formats import folder_files, model_sha256

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
    cluster: str = ""  # what ran the blocks: describe_cluster's line
    error: str | None = None  # why the run ended early (a cluster that did not start), if it did

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
        if self.error:
            rows.append(f"error: {self.error}")
        return "\n".join(rows)


# --- the block task, run on workers -----------------------------------------------------

_RUNNERS: dict[str, BlockRunner] = {}
MAX_OPEN_SCENES = 4


@dataclass(frozen=True)
class BlockFailed:
    """What a block task returns for a user error that a retry cannot fix (a truncated input)."""

    message: str


def block_task(
    spec: SceneSpec, index: tuple[int, ...], torch_threads: int, model: str | None = None
) -> np.ndarray | BlockFailed:
    """Compute and write one block; the worker keeps the scene's source, model and store.

    A user error comes back as :class:`BlockFailed`: no retry, no worker traceback.
    One the operating system reported (a full or failing disk) is raised for Dask
    to retry, without a worker log entry: the run report names it if it persists.
    Any other error is raised, retried and logged as Dask does.
    """
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    if model is not None:  # the digest of a model shipped by ShipModels: workers need no shared disk
        spec = replace(spec, model=shipped_model(model))
    try:
        return worker_runner(spec).run(index)
    except GigasegError as e:
        if not _from_the_system(e):
            return BlockFailed(str(e))
        _unlogged()
        raise


def shipped_model(digest: str) -> str:
    """Where :class:`ShipModels` wrote the model ``digest`` (a file, or a folder's files) on this worker."""
    return str(Path(tempfile.gettempdir()) / "gigaseg-models" / digest)


Shipped = bytes | dict[str, bytes]  # a model file's bytes, or a folder's files by relative name


class ShipModels(WorkerPlugin):
    """A Dask worker plugin carrying models' bytes: every worker, and every one that joins
    later (SLURM workers retire and are replaced), writes them to its own temporary directory.

    Unlike scattered data, a plugin outlives the workers that first held it.
    """

    def __init__(self, models: dict[str, Shipped]) -> None:
        self.models = models  # digest -> a file's bytes, or a folder's files

    def setup(self, worker: Any) -> None:
        for digest, data in self.models.items():
            path = Path(shipped_model(digest))
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            if isinstance(data, bytes):
                partial.write_bytes(data)
            else:
                for name, raw in data.items():
                    (partial / name).parent.mkdir(parents=True, exist_ok=True)
                    (partial / name).write_bytes(raw)
            try:
                os.replace(partial, path)
            except OSError:  # another worker of this machine wrote the same folder first: its copy serves
                if not path.exists():
                    raise
                shutil.rmtree(partial, ignore_errors=True)


def ship_models(client: Any, paths: set[str]) -> dict[str, str]:
    """Register the models at ``paths`` (files or folders) with the cluster; returns path -> digest."""
    data = {path: _model_bytes(path) for path in sorted(paths)}
    digests = {path: model_sha256(path)[:24] for path in data}
    plugin = ShipModels({digests[p]: raw for p, raw in data.items()})
    client.register_plugin(plugin, name="gigaseg-models-" + "-".join(sorted(digests.values())))
    return digests


def _model_bytes(path: str) -> Shipped:
    if not os.path.isdir(path):
        return Path(path).read_bytes()
    return {name: file.read_bytes() for name, file in folder_files(path)}


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
    _UNLOGGED.add(str(key))


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

    left: int = 0
    started: float = field(default_factory=time.perf_counter)
    created: bool = False  # this run made the store (or replaced it): a failed run removes it if still empty

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def run_job(
    job: Job | str | Path,
    *,
    base: Path | None = None,
    resume: bool = False,
    scheduler: str | None = None,
    slurm: Slurm | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> RunReport:
    """Run every scene of ``job`` and write the run report next to the outputs.

    ``job`` is a job file's path (its paths are relative to the file) or a
    :class:`~gigaseg.jobs.jobfile.Job` whose paths are relative to ``base``
    (the current directory by default).
    """
    started = time.perf_counter()
    if not isinstance(job, Job):
        base = Path(job).parent if base is None else base
        job = load_job(job)
    base = Path(".") if base is None else Path(base)
    cluster = run_cluster(job, scheduler=scheduler, slurm=slurm, workers=workers)
    job = job.model_copy(update={"cluster": cluster})
    specs = job.scenes(resume=resume, base=base)
    missing = [SceneResult(m.input, "", "failed", m.error) for m in job.missing_inputs(base)]
    directory = job.output.where(base)
    if not is_remote(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
    report = RunReport([SceneResult(s.input, s.output) for s in specs] + missing, cluster=describe_cluster(cluster))
    scenes: list[SceneState] = []
    try:
        check_cluster(cluster)  # sbatch and dask-jobqueue at hand: checked before any store exists
        for spec in specs:
            scenes.append(prepare_scene(spec))
        report.scenes = [s.result for s in scenes] + missing  # a missing input fails its scene alone
        if any(state.runner is not None for state in scenes):  # no cluster when every scene failed already
            if progress:
                print(f"gigaseg: {report.cluster}", file=sys.stderr)
            with dask_client(cluster) as (client, nworkers):
                report.workers = nworkers
                report.dashboard = client.dashboard_link
                if progress:
                    print(f"gigaseg: Dask dashboard at {client.dashboard_link}", file=sys.stderr)
                _run_scenes(client, scenes, job, torch_threads(nworkers, cluster), progress)
                report.peak_worker_rss_mb = {str(k): v for k, v in client.run(_peak_rss_mb).items()}
    except BaseException as e:
        _ended_early(report, scenes, e)
        report.seconds = time.perf_counter() - started
        write_report(report, join(directory, REPORT_NAME))
        raise
    finally:
        for state in scenes:
            state.release()
    report.seconds = time.perf_counter() - started
    write_report(report, join(directory, REPORT_NAME))
    return report


def _ended_early(report: RunReport, scenes: list[SceneState], error: BaseException) -> None:
    """Record why the run stopped, and remove the stores it made that got no block.

    A store with blocks stays for ``--resume``; an empty one would only make the
    plain rerun ask for ``--overwrite`` or ``--resume``.
    """
    if isinstance(error, KeyboardInterrupt):
        report.error = "interrupted"
    else:
        report.error = str(error) if isinstance(error, GigasegError) else f"{type(error).__name__}: {error}"
    for result in report.scenes:
        if result.status == "pending":
            result.error = f"not run: {report.error}"
    for state in scenes:
        if state.created and state.runner is not None:
            discard_if_empty(state.spec.output)  # still under the store's lock


def torch_threads(workers: int, cluster: Cluster) -> int:
    """Torch threads per worker: its share of the cores (0: leave a remote worker's default)."""
    if cluster.kind == "slurm":
        return (cluster.slurm or Slurm()).cores
    if cluster.kind == "scheduler":
        return 0
    return cluster.threads_per_worker or max(1, (os.cpu_count() or 2) // max(1, workers))


def prepare_scene(spec: SceneSpec) -> SceneState:
    """Open the scene and its store on the driver; a bad input fails this scene alone."""
    state = SceneState(spec, SceneResult(spec.input, spec.export or spec.output))
    try:
        if spec.export and check_file_output(spec.export, spec.options, spec.input):
            state.result.status = "done"  # --resume: an earlier run wrote this scene's file
            return state
        cpu = replace(spec, options=replace(spec.options, device="cpu"))
        planned = plan_checked(cpu)  # every check before the output is touched
        check_shippable(spec.model, planned[0].predictor.card)
        state.lock = StoreLock(spec.output).acquire()
        state.created = not exists(spec.output) or spec.options.overwrite
        state.runner = open_runner(cpu, create=True, planned=planned)
        # The card in force goes with the spec: workers get the model's bytes, not a card beside it.
        state.spec = replace(spec, card=state.runner.predictor.card.to_dict())
    except GigasegError as e:
        state.result.status, state.result.error = "failed", job_message(e)
        state.release()
        return state
    runner = state.runner
    state.summary = Summary(spec.output, list(runner.predictor.card.classes), blocks=runner.plan.blocks.size)
    state.result.blocks = runner.plan.blocks.size
    return state


def check_shippable(model: str, card: ModelCard) -> None:
    """Workers get the model's bytes (a file, or a folder's files): folds beside a model file would not go."""
    if card.folds and not os.path.isdir(model) and not model.startswith("module:"):
        raise InputError(
            f"the card's folds ({', '.join(card.folds)}) are files beside {model}, which a cluster's workers "
            "do not get; run the scene with gigaseg segment, or ship the folds in an nnU-Net result folder",
            parameters=("card",),
        )


def gpu_workers(client: Any) -> bool:
    """True when the cluster's workers declare GPU resources (one per GPU)."""
    workers = client.scheduler_info()["workers"].values()
    return any("GPU" in w.get("resources", {}) for w in workers)


def _run_scenes(client: Any, scenes: list[SceneState], job: Job, threads: int, progress: bool) -> None:
    from distributed import as_completed

    retries = job.cluster.retries
    resources = {"GPU": 1} if gpu_workers(client) else None  # never two blocks on one GPU
    owner: dict[str, SceneState] = {}
    sizes: dict[str, int] = {}  # pixels of each submitted block, for the progress bar
    futures = []
    # Each checkpoint's bytes go to the workers once, through Dask: no worker reads the driver's disk.
    models = ship_models(client, {s.spec.model for s in scenes if s.runner is not None})
    for n, state in enumerate(scenes):
        if state.runner is None:
            continue
        todo = pending_blocks(state.runner.store, state.runner.plan)
        state.result.blocks_skipped = state.result.blocks - len(todo)
        state.left = len(todo)
        for index in todo:
            key = f"gigaseg-block-{n}-{'-'.join(map(str, index))}-{os.getpid()}"
            model = models[state.spec.model]
            future = client.submit(
                block_task, state.spec, index, threads, model, key=key, retries=retries, pure=False, resources=resources
            )
            futures.append(future)
            owner[key] = state
            sizes[key] = state.runner.plan.blocks.block_box(index).size
            state.futures[key] = future
        if not todo:
            _finish(state)
    # Progress per finished block (the driver sees no finer step): pixels with Mpix/s and ETA, scenes done.
    ready = [s for s in scenes if s.runner is not None]
    total = sum(int(math.prod(s.runner.plan.blocks.shape)) for s in ready if s.runner is not None)
    unfinished = {id(s): len(s.futures) for s in ready}  # blocks not yet back, per scene
    with Progress(total, desc="run", enabled=progress, initial=total - sum(sizes.values())) as bar:
        bar.note(f"scenes {sum(n == 0 for n in unfinished.values())}/{len(ready)}")
        for future in as_completed(futures):
            state = owner[future.key]
            unfinished[id(state)] -= 1
            bar.advance(sizes[future.key])
            finished = sum(unfinished[id(s)] == 0 or s.result.status == "failed" for s in ready)
            bar.note(f"scenes {finished}/{len(ready)}")
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
    if state.created:  # a store this run made that got no block would only block the rerun
        discard_if_empty(state.spec.output)


def _finish(state: SceneState) -> None:
    assert state.runner is not None and state.summary is not None
    state.summary.blocks_skipped = state.result.blocks_skipped
    spec, runner = state.spec, state.runner
    # Refinement runs here, on the driver, once every block of the scene is segmented.
    try:
        stage = refine_stage(runner, spec.input, spec.options)
        counts = stage.finish() if stage is not None else None
    except GigasegError as e:
        state.result.status, state.result.error = "failed", f"refinement: {e}"
        return
    seconds = time.perf_counter() - state.started
    summary = finish_scene(runner.store, state.summary, seconds, counts)
    state.runner.source.close()
    if spec.export:
        try:
            export_mask(spec.output, spec.export, overwrite=True)
            remove_tree(spec.output)
        except GigasegError as e:
            state.result.status, state.result.error = "failed", f"export: {e}"
            return
    state.result.status = "done"
    state.result.seconds = seconds
    state.result.mpix_per_s = summary.pixels / 1e6 / seconds if seconds else 0.0
    state.result.counts = summary.counts


def write_report(report: RunReport, path: Path | str) -> Path | str:
    return _write_json(path, {**asdict(report), "ok": report.ok})


def write_error_report(path: Path | str, error: str) -> Path | str:
    return _write_json(path, {"ok": False, "error": error, "scenes": []})


def _write_json(path: Path | str, payload: dict[str, Any]) -> Path | str:
    """Write atomically: a reader polling for ``path`` never sees half a report (one PUT on object storage)."""
    if is_remote(path):
        fs, key = location(path)
        fs.pipe_file(key, json.dumps(payload, indent=2).encode())
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


# --- the cluster ---------------------------------------------------------------------------

WORKER_START_TIMEOUT = 300.0  # seconds for the first worker (every worker, locally) to join


class ClusterError(GigasegError, RuntimeError):
    """The cluster cannot start or be reached: the environment, not the job (exit code 2)."""


def run_cluster(
    job: Job, *, scheduler: str | None = None, slurm: Slurm | None = None, workers: int | None = None
) -> Cluster:
    """The job's ``cluster`` with a caller's overrides, each naming its kind explicitly.

    ``scheduler`` (an address) makes it kind scheduler, ``slurm`` kind slurm;
    ``workers`` sizes a local cluster and is refused for another kind.
    """
    cluster = job.cluster
    if scheduler and slurm:
        raise InputError("give scheduler or slurm, not both: they are two clusters", parameters=("scheduler", "slurm"))
    if scheduler:
        cluster = Cluster(kind="scheduler", scheduler=scheduler, retries=cluster.retries)
    elif slurm:
        cluster = Cluster(kind="slurm", slurm=slurm, retries=cluster.retries)
    if workers is not None:
        if cluster.kind != "local":
            raise InputError(
                f"workers sizes a local cluster, but this run's cluster.kind is {cluster.kind}", parameters=("workers",)
            )
        if workers < 1:
            raise InputError(f"workers must be a whole number of at least 1, got {workers}", parameters=("workers",))
        cluster = Cluster(**{**cluster.model_dump(exclude_unset=True), "workers": workers})
    return cluster


def check_cluster(cluster: Cluster) -> None:
    """Refuse, in one line, a SLURM cluster this machine cannot submit to: no ``sbatch``, no
    dask-jobqueue, or a worker job ``sbatch --test-only`` turns down (an unknown queue or
    account, a walltime or memory over the queue's limits). Nothing is submitted."""
    if cluster.kind != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise ClusterError("sbatch not found: is SLURM installed? (cluster.kind: slurm)")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        raise ClusterError(
            "dask-jobqueue is not installed: pip install 'gigaseg[slurm]' (cluster.kind: slurm)"
        ) from None
    check_submission(worker_script(cluster.slurm or Slurm()))


def describe_cluster(cluster: Cluster) -> str:
    """One line: the cluster's kind and its settings (``--dry-run`` prints it, the report keeps it)."""
    retries = f"{_n(cluster.retries, 'retry', 'retries')} per block"
    if cluster.kind == "scheduler":
        return f"cluster: scheduler {cluster.scheduler}, {retries}"
    if cluster.kind == "slurm":
        s = cluster.slurm or Slurm()
        parts = [f"{_n(s.jobs, 'job')} of {_n(s.cores, 'core')}", f"{s.memory} each", f"walltime {s.walltime}"]
        parts += [f"queue {s.queue}"] if s.queue else []
        parts += [f"account {s.account}"] if s.account else []
        parts += [f"{_n(s.gpus_per_job, 'GPU')} per job"] if s.gpus_per_job else []
        parts += [f"workers replaced every {s.lifetime}"] if s.lifetime else []
        return f"cluster: slurm, {', '.join(parts)}, {retries}"
    n, gpus = local_workers(cluster.workers)
    threads = torch_threads(n, cluster)
    each = ", one GPU each" if gpus else ""
    return f"cluster: local, {_n(n, 'worker')} x {_n(threads, 'thread')}{each}, {retries}"


def _n(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@contextmanager
def dask_client(cluster: Cluster) -> Iterator[tuple[Any, int]]:
    """A Dask client on an existing scheduler, a SLURM cluster, or a local cluster, as ``cluster.kind`` says.

    A cluster that cannot start (no scheduler at the address, no worker within
    :data:`WORKER_START_TIMEOUT`) raises :class:`ClusterError`.
    """
    from distributed import Client

    if cluster.kind == "scheduler":
        try:
            client = Client(cluster.scheduler)
        except (OSError, TimeoutError) as e:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {cluster.scheduler}: {e} (cluster.kind: scheduler)"
            ) from None
        except Exception as e:  # something else listens there: its reply makes no sense to Dask
            raise ClusterError(
                f"{cluster.scheduler} does not answer as a Dask scheduler ({type(e).__name__}) "
                "(cluster.kind: scheduler)"
            ) from None
        with client:
            _wait_for_workers(client, 1, cluster)  # then the others join as they come
            yield client, len(client.scheduler_info()["workers"])
        return
    if cluster.kind == "slurm":
        slurm = cluster.slurm or Slurm()
        slurm = slurm.model_copy(update={"log_directory": slurm.log_directory or _slurm_logs()})
        made, expected, wait_for = slurm_cluster(slurm), slurm.jobs, 1  # jobs may wait in the queue
        cluster = cluster.model_copy(update={"slurm": slurm})
    else:
        made = local_cluster(cluster.workers)
        expected = wait_for = len(made.workers)
    with made, Client(made) as client:
        _wait_for_workers(client, wait_for, cluster)
        yield client, expected


def _slurm_logs() -> Path:
    return Path(tempfile.mkdtemp(prefix="gigaseg-slurm-"))


def _wait_for_workers(client: Any, n: int, cluster: Cluster) -> None:
    try:
        client.wait_for_workers(n, timeout=WORKER_START_TIMEOUT)
    except TimeoutError:  # distributed's WorkerStartTimeoutError
        running = len(client.scheduler_info()["workers"])
        where = {
            "slurm": f"; see squeue and the worker logs in {getattr(cluster.slurm, 'log_directory', None)}",
            "scheduler": f"; are workers started for {cluster.scheduler}?",
        }.get(cluster.kind, "")
        started = f"only {running} of {n} Dask workers" if running else "no Dask worker"
        raise ClusterError(
            f"{started} started within {WORKER_START_TIMEOUT:g} s{where} (cluster.kind: {cluster.kind})"
        ) from None


def local_workers(workers: int | None) -> tuple[int, int]:
    """Workers of a local cluster (one per GPU, else one per two cores, unless given) and the GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    return workers or gpus or max(1, (os.cpu_count() or 2) // 2), gpus


def local_cluster(workers: int | None) -> Any:
    """One worker per GPU, else one per two cores; one task at a time per worker."""
    from distributed import LocalCluster

    n, gpus = local_workers(workers)
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
    """Workers as SLURM jobs (dask-jobqueue), each one Dask worker with one task slot.

    :func:`check_cluster` has put the worker job to ``sbatch --test-only`` before
    (``run_job`` and ``--dry-run`` call it first).
    """
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(**_worker_job(settings))
    # adapt keeps the worker count up when a worker's walltime (--lifetime) ends mid-run
    cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster


def _worker_job(settings: Slurm) -> dict[str, Any]:
    """dask-jobqueue's settings of one worker job: one Dask worker with one task slot."""
    extra = ["--nthreads", "1"]
    if settings.lifetime:
        extra += ["--lifetime", settings.lifetime, "--lifetime-stagger", "2s"]
    if settings.gpus_per_job:
        extra += ["--resources", f"GPU={settings.gpus_per_job}"]
    return {
        "queue": settings.queue,
        "account": settings.account,
        "cores": settings.cores,
        "processes": 1,
        "memory": settings.memory,
        "walltime": settings.walltime,
        "python": sys.executable,
        "worker_extra_args": extra,
        "job_extra_directives": [f"--gpus={settings.gpus_per_job}"] if settings.gpus_per_job else [],
        "log_directory": str(settings.log_directory or tempfile.gettempdir()),  # a run sets its own
        "local_directory": tempfile.gettempdir(),
    }


def worker_script(settings: Slurm) -> str:
    """The batch script of one worker job, as the run would submit it (no scheduler is started:
    the address in it is a stand-in)."""
    from dask_jobqueue.slurm import SLURMJob

    stand_in = settings.model_copy(update={"log_directory": Path(tempfile.gettempdir())})  # dask-jobqueue makes it
    return str(SLURMJob(scheduler="tcp://127.0.0.1:8786", name="gigaseg-worker", **_worker_job(stand_in)).job_script())


SBATCH_TEST_TIMEOUT = 120.0  # seconds for sbatch --test-only to answer


def check_submission(script: str) -> None:
    """Have ``sbatch --test-only`` validate a worker job's script: nothing is submitted."""
    with tempfile.NamedTemporaryFile("w", prefix="gigaseg-worker-", suffix=".sh") as f:
        f.write(script)
        f.flush()
        try:
            done = subprocess.run(
                ["sbatch", "--test-only", f.name],
                capture_output=True,
                text=True,
                timeout=SBATCH_TEST_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ClusterError(f"sbatch cannot test the worker job: {e} (cluster.kind: slurm)") from None
    if done.returncode != 0:
        said = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        why = said[-1] if said else f"exit code {done.returncode}"
        raise ClusterError(f"SLURM refuses the worker jobs: {why} (cluster.kind: slurm)")


def plan_lines(job: Job, *, base: Path, resume: bool) -> tuple[list[str], int]:
    """What ``gigaseg run --dry-run`` prints: per scene, the plan and what exists already.

    Also returns how many scenes would fail.
    """
    from gigaseg.jobs.preflight import describe_scene

    lines, failing = [], 0
    for spec in job.scenes(resume=resume, base=base):
        try:
            lines.append(describe_scene(spec))
            cpu = replace(spec, options=replace(spec.options, device="cpu"))  # as the dry run's plan
            check_shippable(spec.model, load_predictor(cpu).card)  # as the run refuses it
        except GigasegError as e:
            lines.append(f"{spec.input}: FAILS: {e}")
            failing += 1
    for missing in job.missing_inputs(base):  # the run fails these scenes alone, as here
        lines.append(f"{missing.input}: FAILS: {missing.error}")
        failing += 1
    return lines, failing
