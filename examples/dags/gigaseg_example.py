"""Example Airflow 3 DAG: segment every scene of a gigaseg job file.

The job file comes from the GIGASEG_EXAMPLE_JOB environment variable (default:
examples/job.yaml beside this folder). The first task runs the job in the
worker; the second, deferrable, starts it as a detached process and waits in
the triggerer, holding no worker slot (with --resume it only checks the work).
"""

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG

from gigaseg.jobs.airflow import SegmentOperator

JOB = os.environ.get("GIGASEG_EXAMPLE_JOB", str(Path(__file__).parents[1] / "job.yaml"))

with DAG("gigaseg_example", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["gigaseg"]):
    segment = SegmentOperator(task_id="segment", job=JOB, workers=1)
    check = SegmentOperator(task_id="segment_deferred", job=JOB, workers=1, deferrable=True, poll_interval=1.0)
    segment >> check
