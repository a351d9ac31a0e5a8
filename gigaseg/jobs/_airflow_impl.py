"""SegmentOperator and its trigger (imported lazily by ``gigaseg.jobs.airflow``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from airflow.exceptions import AirflowException
from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from gigaseg.jobs.jobfile import Job, load_job


class SegmentOperator(BaseOperator):
    """Run a gigaseg job file (optionally on a subset of its inputs) as one Airflow task.

    ``deferrable=True`` starts the run as a detached ``gigaseg run`` process (on a
    Dask scheduler or SLURM when given) and frees the worker slot: a trigger waits
    for the run's report in the triggerer. ``inputs`` overrides the job's inputs,
    so ``SegmentOperator.partial(job=...).expand(inputs=[[a], [b]])`` maps scenes.
    Returns (XCom) the run report as a dict; fails the task if any scene failed.
    """

    template_fields = ("job", "inputs")

    def __init__(
        self,
        *,
        job: str,
        inputs: list[str] | None = None,
        resume: bool = True,
        scheduler: str | None = None,
        workers: int | None = None,
        deferrable: bool = False,
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.inputs = inputs
        self.resume = resume
        self.scheduler = scheduler
        self.workers = workers
        self.deferrable = deferrable
        self.poll_interval = poll_interval

    def _job(self) -> tuple[Job, Path]:
        job = load_job(self.job)
        base = Path(self.job).absolute().parent
        if self.inputs:
            job = job.model_copy(update={"inputs": list(self.inputs)})
        return job, base

    def execute(self, context: Any) -> dict[str, Any]:
        from gigaseg.jobs.runner import run_job

        job, base = self._job()
        if self.deferrable:
            report = self._start_detached(job, base)
            self.defer(trigger=JobReportTrigger(str(report), self.poll_interval), method_name="execute_complete")
        result = run_job(job, base=base, resume=self.resume, scheduler=self.scheduler, workers=self.workers)
        self.log.info("gigaseg run:\n%s", result.table())
        return _checked({**asdict(result), "ok": result.ok})

    def _start_detached(self, job: Job, base: Path) -> Path:
        """Write the (absolute-path) job beside its outputs and start ``gigaseg run`` on it."""
        runs = base / job.output.dir / ".gigaseg-runs"
        runs.mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex[:12]
        job_file, report = runs / f"{run_id}.yaml", runs / f"{run_id}.report.json"
        job_file.write_text(yaml.safe_dump(job.absolute(base).model_dump(mode="json")))
        command = [sys.executable, "-m", "gigaseg", "run", str(job_file), "--report", str(report)]
        command += ["--resume"] if self.resume else []
        command += ["--scheduler", self.scheduler] if self.scheduler else []
        command += ["--workers", str(self.workers)] if self.workers else []
        log = (runs / f"{run_id}.log").open("w")
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
        self.log.info("gigaseg run %s started: %s", run_id, " ".join(command))
        return report

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return _checked(json.loads(Path(event["report"]).read_text()))


def _checked(report: dict[str, Any]) -> dict[str, Any]:
    if not report.get("ok"):
        failed = [f"{s['input']}: {s['error']}" for s in report.get("scenes", []) if s.get("status") != "done"]
        raise AirflowException(
            f"gigaseg: {len(failed)} scene(s) failed: " + "; ".join(failed or [report.get("error", "")])
        )
    return report


class JobReportTrigger(BaseTrigger):
    """Fires when a detached run has written its report (it always does, even on failure)."""

    def __init__(self, report: str, poll_interval: float = 5.0) -> None:
        super().__init__()
        self.report = report
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.JobReportTrigger", {"report": self.report, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while not os.path.exists(self.report):
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent({"report": self.report})
