"""The Airflow operator under a real Airflow 3: db migrate, reserialize, dags test."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from gigaseg.jobs.airflow import get_provider_info
from gigaseg.models.checkpoint import init_checkpoint
from tests.conftest import require, write_tiff

REPO = Path(__file__).parents[1]


def test_provider_info_names_the_package():
    info = get_provider_info()
    assert info["package-name"] == "gigaseg"
    assert {"name", "description", "versions"} <= set(info)


@pytest.mark.slow
def test_example_dag_runs_under_airflow(tmp_path, rng):
    require(importlib.util.find_spec("airflow") is not None, "apache-airflow is not installed (pip install .[airflow])")
    (tmp_path / "scenes").mkdir()
    for i in range(2):
        write_tiff(tmp_path / "scenes" / f"s{i}.tif", rng.integers(0, 200, (3, 96, 80)).astype(np.uint8))
    init_checkpoint(tmp_path / "m.pt", arch="conv", in_channels=3, classes=["a", "b"], tile=32, overlap=8)
    job = tmp_path / "job.yaml"
    job.write_text("inputs: ['scenes/*.tif']\nmodel: m.pt\noutput: {dir: masks}\ntiling: {block: 64, chunk: 32}\n")
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(REPO / "examples" / "dags" / "gigaseg_example.py", dags)
    env = {
        **os.environ,
        "GIGASEG_EXAMPLE_JOB": str(job),
        "AIRFLOW_VENV": sys.prefix,
        "AIRFLOW_SKIP_SETUP": "1",
        "AIRFLOW_DAG_TIMEOUT": "400",
    }
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "airflow.sh"), "run-dag", str(dags), "gigaseg_example"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stem in ("s0", "s1"):
        group = zarr.open_group(str(tmp_path / "masks" / f"{stem}_mask.zarr"), mode="r")
        assert group.attrs["gigaseg"]["complete"] is True
    reports = list((tmp_path / "masks" / ".gigaseg-runs").glob("*.report.json"))
    assert len(reports) == 1, "the deferrable task did not run its detached job"
    assert '"ok": true' in reports[0].read_text()
