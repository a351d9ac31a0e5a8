"""``gigaseg run``: a job file (many scenes) on a Dask cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from gigaseg.errors import InputError


@click.command("run")
@click.argument("job_path", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--local", is_flag=True, help="Run on a local Dask cluster, whatever cluster.kind says.")
@click.option("--scheduler", default=None, help="Run on the Dask scheduler at this address (tcp://host:8786).")
@click.option("--workers", type=int, default=None, help="Local workers (default: one per GPU, else per 2 cores).")
@click.option("--slurm", is_flag=True, help="Run the workers as SLURM jobs, whatever cluster.kind says.")
@click.option("--slurm-queue", default=None, help="SLURM partition.")
@click.option("--slurm-jobs", type=int, default=None, help="SLURM jobs, one Dask worker each.")
@click.option("--slurm-cores", type=int, default=None, help="Cores per SLURM job.")
@click.option("--slurm-memory", default=None, help="Memory per SLURM job, e.g. 16GB.")
@click.option("--slurm-walltime", default=None, help="Walltime per SLURM job, e.g. 02:00:00.")
@click.option("--slurm-gpus-per-job", type=int, default=None)
@click.option("--slurm-lifetime", default=None, help="Retire workers after this long (e.g. 50m); replaced.")
@click.option("--resume", is_flag=True, help="Redo only the blocks that are not finished.")
@click.option("--dry-run", is_flag=True, help="Print the plan and what exists; run nothing.")
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the run report here (written even when the run fails).",
)
def run_command(job_path: Path, resume: bool, dry_run: bool, report: Path | None, **kw: Any) -> None:
    """Run a job file (many scenes) on a Dask cluster."""
    if report is None:
        return _run_job(job_path, resume, dry_run, **kw)
    try:
        _run_job(job_path, resume, dry_run, report=report, **kw)
    except Exception as e:  # the report's reader (the Airflow trigger) must hear of any end
        from gigaseg.jobs.runner import write_error_report

        write_error_report(report, f"{type(e).__name__}: {e}")
        raise


def _run_job(job_path: Path, resume: bool, dry_run: bool, *, report: Path | None = None, **kw: Any) -> None:
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import check_cluster, describe_cluster, plan_lines, run_job, write_report

    job = load_job(job_path)
    job = job.model_copy(update={"cluster": _cluster(job, kw)})
    base = job_path.absolute().parent
    if dry_run:
        lines, failing = plan_lines(job, base=base, resume=resume)
        for line in [describe_cluster(job.cluster), *lines]:
            click.echo(line)
        check_cluster(job.cluster)
        if failing:
            raise InputError(f"{failing} of {len(lines)} scenes would fail (FAILS above); fix or drop those inputs")
        return
    result = run_job(job, base=base, resume=resume, progress=sys.stderr.isatty())
    if report is not None:
        write_report(result, report)
    click.echo(result.table())
    if not result.ok:
        sys.exit(1)


KIND_FLAGS = {"local": "--local", "scheduler": "--scheduler", "slurm": "--slurm"}


def _cluster(job: Any, kw: dict[str, Any]) -> Any:
    """The job's ``cluster`` as the flags change it: --local, --scheduler or --slurm sets its kind."""
    from pydantic import ValidationError

    from gigaseg.jobs.jobfile import Cluster, Slurm

    chosen = [kind for kind, flag in KIND_FLAGS.items() if kw[flag.removeprefix("--")]]
    if len(chosen) > 1:
        raise InputError(f"{' and '.join(KIND_FLAGS[k] for k in chosen)} choose different clusters; give one")
    file = job.cluster
    kind = chosen[0] if chosen else file.kind
    why = KIND_FLAGS[kind] if chosen else "cluster.kind in the job file"
    slurm_flags = {k.removeprefix("slurm_"): v for k, v in kw.items() if k.startswith("slurm_") and v is not None}
    if slurm_flags and kind != "slurm":
        flag = "--slurm-" + next(iter(slurm_flags)).replace("_", "-")
        raise InputError(f"{flag} sets a SLURM cluster, but this run's cluster is {kind} ({why}); add --slurm")
    if kw["workers"] is not None and kw["workers"] < 1:
        raise InputError(f"--workers must be a whole number of at least 1, got {kw['workers']}")
    if kw["workers"] is not None and kind != "local":
        raise InputError(f"--workers sizes a local cluster, but this run's cluster is {kind} ({why}); add --local")
    same = kind == file.kind  # the file's settings of that kind still apply
    if kind == "local":
        workers = kw["workers"] or (file.workers if same else None)
        threads = file.threads_per_worker if same else None
        return Cluster(kind="local", workers=workers, threads_per_worker=threads, retries=file.retries)
    if kind == "scheduler":
        return Cluster(kind="scheduler", scheduler=kw["scheduler"] or file.scheduler, retries=file.retries)
    try:
        slurm = Slurm(**{**(file.slurm.model_dump(exclude_unset=True) if file.slurm else {}), **slurm_flags})
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"--slurm-{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    return Cluster(kind="slurm", slurm=slurm, retries=file.retries)
