"""``gigaseg status``: per-scene progress of a job."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("status")
@click.argument("job_path", metavar="JOB", type=click.Path(path_type=Path))
def status(job_path: Path) -> None:
    """Per-scene progress of a job, read from the output stores themselves."""
    from gigaseg.io.location import exists
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.preflight import existing

    job = load_job(job_path)
    base = job_path.absolute().parent
    for spec in job.scenes(base=base):
        if spec.export and exists(spec.export) and not exists(spec.output):
            click.echo(f"{spec.input} -> {spec.export}: complete")  # exported, its staging store gone
        else:
            click.echo(f"{spec.input} -> {spec.export or spec.output}: {existing(spec.output)}")
    for missing in job.missing_inputs(base):
        click.echo(f"{missing.input}: missing ({missing.error})")
