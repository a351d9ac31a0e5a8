"""A job with URL inputs and an object-storage output runs on Dask workers that share no directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from gigaseg import SegmentOptions, load_job, run_job, segment
from tests.conftest import write_tiff

pytestmark = pytest.mark.slow


def dask_program() -> str:
    program = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    assert program, "the dask command (dask[distributed]) is not installed"
    return program


@pytest.fixture
def bare_cluster(tmp_path):
    """A scheduler and two workers, each started in its own empty directory (no shared disk)."""
    from tests.servers import _wait_for, free_port

    port = free_port()
    processes = []
    env = {**os.environ, "PYTHONPATH": ""}  # the workers import gigaseg as installed, nothing from here
    try:
        home = tmp_path / "scheduler"
        home.mkdir()
        processes.append(
            subprocess.Popen(
                [dask_program(), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                cwd=home,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        assert _wait_for(port, 60), "the Dask scheduler did not start"
        for n in range(2):
            home = tmp_path / f"worker-{n}"
            home.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        dask_program(),
                        "worker",
                        f"tcp://127.0.0.1:{port}",
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--local-directory",
                        str(home),
                        "--no-dashboard",
                        "--name",
                        f"bare-{n}",
                    ],
                    cwd=home,
                    env={**env, "TMPDIR": str(home)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield f"tcp://127.0.0.1:{port}", [tmp_path / f"worker-{n}" for n in range(2)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_ten_scenes_from_urls_to_s3_on_workers_with_no_shared_disk(
    tmp_path, range_server, s3, bare_cluster, pointwise_model
):
    import s3fs

    address, homes = bare_cluster
    rng = np.random.default_rng(7)
    scenes = {}
    for n in range(10):
        data = rng.integers(0, 200, (3, 160, 200)).astype(np.uint8)
        scenes[f"s{n:02d}"] = write_tiff(
            range_server.root / f"s{n:02d}.tif", data, tiled=True, blockxsize=64, blockysize=64
        )
    driver = tmp_path / "driver"
    driver.mkdir()
    shutil.copy(pointwise_model, driver / "m.pt")
    inputs = [f"{range_server.url}/{name}.tif" for name in scenes]
    (driver / "job.yaml").write_text(
        json.dumps(
            {
                "inputs": inputs,
                "model": "m.pt",
                "output": {"dir": f"{s3}/masks", "name": "{stem}.zarr"},
                "cluster": {"kind": "scheduler", "scheduler": address},
            }
        )
    )
    report = run_job(load_job(driver / "job.yaml"), base=driver)
    assert report.ok, [s.error for s in report.scenes]
    fs = s3fs.S3FileSystem()
    saved = json.loads(fs.cat(f"{s3}/masks/gigaseg-run-report.json"))  # the report is at the output location
    assert saved["ok"] and len(saved["scenes"]) == 10
    for name, local in scenes.items():
        segment(local, pointwise_model, tmp_path / f"{name}.zarr", SegmentOptions())
        want = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["mask"][...]
        got = zarr.open_group(f"{s3}/masks/{name}.zarr", mode="r")["mask"][...]
        assert np.array_equal(got, want), name
    for home in homes:  # the workers kept their model copy in their own directory, not a driver path
        assert list(home.rglob("gigaseg-models/*"))
