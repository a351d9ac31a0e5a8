"""Job files and the Dask runner: real local clusters, real worker kills, real resume."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

from gigaseg import SegmentOptions, segment
from gigaseg.errors import InputError
from gigaseg.jobs.jobfile import load_job
from gigaseg.jobs.runner import REPORT_NAME, run_job
from tests.conftest import small_unet, write_tiff

JOB = """
inputs: ["scenes/*.tif"]
model: m.pt
output: {{dir: out}}
tiling: {{block: {block}, chunk: {chunk}, batch_size: 2}}
cluster: {{workers: 2, retries: 2}}
"""


@pytest.fixture
def job_dir(tmp_path, rng):
    """Two scenes of 8 x 7 blocks: enough work that a kill lands while blocks are running."""
    (tmp_path / "scenes").mkdir()
    for i in range(2):
        data = rng.integers(0, 200, (3, 512, 400)).astype(np.uint8)
        write_tiff(tmp_path / "scenes" / f"s{i}.tif", data)
    small_unet(tmp_path / "m.pt", seed=1)
    (tmp_path / "job.yaml").write_text(JOB.format(block=64, chunk=64))
    return tmp_path


def clean_masks(job_dir):
    """The oracle: each scene segmented in this process, one block after another."""
    masks = {}
    for tif in sorted((job_dir / "scenes").glob("s*.tif")):
        out = job_dir / "clean" / f"{tif.stem}.zarr"
        out.parent.mkdir(exist_ok=True)
        segment(tif, job_dir / "m.pt", out, SegmentOptions(block=64, chunk=64, batch_size=2))
        masks[tif.stem] = zarr.open_array(str(out / "mask"))[:]
    return masks


def assert_outputs_equal(job_dir, masks):
    for stem, expected in masks.items():
        group = zarr.open_group(str(job_dir / "out" / f"{stem}_mask.zarr"), mode="r")
        assert group.attrs["gigaseg"]["complete"] is True
        assert np.array_equal(group["mask"][:], expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs: [a.tif]\nmodel: m.pt\ntiling: {tiles: 3}\n", "unknown key 'tiling.tiles'"),
        ("inputs: [a.tif]\nmodel: m.pt\nextra: 1\n", "unknown key 'extra'"),
        ("inputs: [a.tif]\nmodel: m.pt\ntiling: {block: big}\n", "tiling.block"),
        ("inputs: a.tif\nmodel: m.pt\n", "inputs"),
        ("model: m.pt\n", "inputs: Field required"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("inputs: [\n", "not valid YAML"),
        ("inputs: [a.tif]\nmodel: m.pt\ntiling: {band_memory: lots}\n", "tiling.band_memory"),
        ("inputs: [a.tif]\nmodel: m.pt\ntiling: {readers: 0}\n", "tiling.readers"),
        ("inputs: [a.tif]\nmodel: m.pt\ncluster: {kind: slurm, slurm: {memory: lots}}\n", "memory: must be a size"),
        ("inputs: [a.tif]\nmodel: m.pt\ncluster: {kind: slurm, slurm: {lifetime: abc}}\n", "must be a duration"),
        # a value goes into the worker job's script as it is: no second directive through it
        ("inputs: [a.tif]\nmodel: m.pt\ncluster: {kind: slurm, slurm: {queue: 'debug --wrap=id'}}\n", "one word"),
        # a value no member of `int | str` takes: the key as written, not pydantic's `tiling.tile.int`
        (
            "inputs: [a.tif]\nmodel: m.pt\ntiling: {tile: [1, 2]}\n",
            r"tiling\.tile: Input should be a valid integer or Input should be a valid string; got \[1, 2\]$",
        ),
    ],
)
def test_bad_job_files_name_the_problem(tmp_path, text, message):
    (tmp_path / "job.yaml").write_text(text)
    with pytest.raises(InputError, match=message):
        load_job(tmp_path / "job.yaml")


def test_inputs_of_the_same_stem_are_refused_with_a_hint_that_fits_the_name(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_tiff(tmp_path / folder / "x.tif", np.ones((3, 8, 8), np.uint8))
    (tmp_path / "job.yaml").write_text("inputs: [a/x.tif, b/x.tif]\nmodel: m.pt\n")
    with pytest.raises(InputError, match="both map to output .*x_mask.zarr; they have the same stem"):
        load_job(tmp_path / "job.yaml").scenes(base=tmp_path)
    (tmp_path / "job.yaml").write_text("inputs: [a/x.tif, b/x.tif]\nmodel: m.pt\noutput: {name: m.zarr}\n")
    with pytest.raises(InputError, match=r"make output.name \('m.zarr'\) tell them apart, e.g. with \{stem\}"):
        load_job(tmp_path / "job.yaml").scenes(base=tmp_path)


def test_inputs_that_name_no_file_are_missing_scenes_not_a_refused_job(tmp_path):
    write_tiff(tmp_path / "a.tif", np.ones((3, 8, 8), np.uint8))
    (tmp_path / "job.yaml").write_text("inputs: ['nothing/*.tif', a.tif, b.tif]\nmodel: m.pt\n")
    job = load_job(tmp_path / "job.yaml")
    assert [Path(s.input).name for s in job.scenes(base=tmp_path)] == ["a.tif"]
    assert [(m.input, m.error) for m in job.missing_inputs(tmp_path)] == [
        (str(tmp_path / "nothing/*.tif"), "input pattern 'nothing/*.tif' matches no file"),
        (str(tmp_path / "b.tif"), "input b.tif does not exist"),
    ]


def test_the_nodata_rule_of_a_job_file_reaches_every_scene(tmp_path):
    write_tiff(tmp_path / "a.tif", np.ones((3, 8, 8), np.uint8))
    (tmp_path / "job.yaml").write_text("inputs: [a.tif]\nmodel: m.pt\nnodata_rule: any-band\n")
    assert [s.options.nodata_rule for s in load_job(tmp_path / "job.yaml").scenes(base=tmp_path)] == ["any-band"]
    (tmp_path / "job.yaml").write_text("inputs: [a.tif]\nmodel: m.pt\n")
    assert load_job(tmp_path / "job.yaml").scenes(base=tmp_path)[0].options.nodata_rule == "all-bands"


@pytest.mark.slow
def test_job_on_two_workers_equals_the_single_process_run(job_dir):
    (job_dir / "scenes" / "broken.tif").write_bytes(b"II*\x00garbage")
    job = load_job(job_dir / "job.yaml")
    report = run_job(job, base=job_dir)
    status = {Path(s.input).name: s for s in report.scenes}
    assert status["broken.tif"].status == "failed"
    assert "cannot read" in status["broken.tif"].error
    assert status["s0.tif"].status == status["s1.tif"].status == "done"
    assert not report.ok
    assert_outputs_equal(job_dir, clean_masks(job_dir))
    saved = json.loads((job_dir / "out" / REPORT_NAME).read_text())
    assert saved["ok"] is False and len(saved["scenes"]) == 3
    assert all(mb > 0 for mb in saved["peak_worker_rss_mb"].values())


def worker_processes():
    """Dask worker processes of this process's LocalCluster (spawned by its nannies)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        # a worker renames itself "dask worker [address]" (setproctitle) once it runs
        if ("spawn_main" in line or line.startswith("dask worker")) and "resource_tracker" not in line:
            found.append(proc)
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_replaced_and_the_result_unchanged(job_dir):
    killed = []

    def kill_a_worker_once_blocks_land():
        store = job_dir / "out" / "s0_mask.zarr" / "blocks_done"
        deadline = time.time() + 600
        while time.time() < deadline:
            done = len([p for p in store.glob("*") if not p.name.startswith(".")]) if store.exists() else 0
            workers = worker_processes()
            if done >= 2 and workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_once_blocks_land)
    killer.start()
    report = run_job(load_job(job_dir / "job.yaml"), base=job_dir)
    killer.join()
    assert killed, "no worker was killed: the job finished too fast for this test"
    assert report.ok
    assert_outputs_equal(job_dir, clean_masks(job_dir))


@pytest.mark.slow
def test_a_killed_job_resumes_redoing_only_unfinished_blocks(job_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gigaseg", "run", str(job_dir / "job.yaml")]
    proc = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done_path = job_dir / "out" / "s0_mask.zarr" / "blocks_done"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if done_path.exists() and len([p for p in done_path.glob("*") if not p.name.startswith(".")]) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {
        s: zarr.open_array(str(job_dir / "out" / f"{s}_mask.zarr" / "blocks_done"))[:].sum() for s in ("s0", "s1")
    }
    group = zarr.open_group(str(job_dir / "out" / "s0_mask.zarr"), mode="r")
    assert group.attrs["gigaseg"]["complete"] is False
    report = run_job(load_job(job_dir / "job.yaml"), base=job_dir, resume=True)
    assert report.ok
    for scene in report.scenes:
        assert scene.blocks_skipped >= done_before[Path(scene.input).stem]
    assert_outputs_equal(job_dir, clean_masks(job_dir))


@pytest.mark.slow
def test_cli_run_exit_code_and_status(job_dir):
    from click.testing import CliRunner

    from gigaseg.jobs.cli import cli

    result = CliRunner().invoke(cli, ["run", str(job_dir / "job.yaml"), "--dry-run"])
    assert result.exit_code == 0
    assert "4 blocks" in result.output or "blocks of" in result.output
    assert "new" in result.output
    result = CliRunner().invoke(cli, ["run", str(job_dir / "job.yaml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "done" in result.output
    result = CliRunner().invoke(cli, ["status", str(job_dir / "job.yaml")])
    assert result.output.count("complete") == 2
    result = CliRunner().invoke(cli, ["run", str(job_dir / "job.yaml"), "--workers", "1"])
    assert result.exit_code == 1  # outputs exist without --resume: each scene fails clearly
    assert "output.overwrite" in result.output  # the job file's key, as the CLI names flags


def slurm_ready() -> bool:
    import shutil

    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False).stdout
    return any(s in states for s in ("idle", "mixed", "allocated"))


@pytest.mark.slow
def test_a_job_runs_through_slurm_while_workers_retire(job_dir):
    """Real SLURM (.ci/slurm.sh starts it in CI): two worker jobs whose lifetime ends mid-run."""
    from tests.conftest import require

    require(slurm_ready(), "no SLURM controller is up (bash .ci/slurm.sh starts one)")
    logs = job_dir / "slurm-logs"
    logs.mkdir()
    cluster = (
        "cluster:\n  kind: slurm\n  retries: 2\n  slurm: {queue: debug, jobs: 2, cores: 1, memory: 2GB, "
        f"walltime: '00:10:00', lifetime: 6s, log_directory: '{logs}'}}\n"
    )
    job = JOB.format(block=64, chunk=64).replace("cluster: {workers: 2, retries: 2}\n", cluster)
    (job_dir / "slurm-job.yaml").write_text(job)
    report = run_job(load_job(job_dir / "slurm-job.yaml"), base=job_dir)
    assert report.ok, report.table()
    assert report.cluster.startswith("cluster: slurm, 2 jobs of 1 core")
    assert_outputs_equal(job_dir, clean_masks(job_dir))
    submitted = list(logs.glob("*.err")) or list(logs.glob("*.out"))
    assert len(submitted) > 2, f"no worker was replaced: {submitted}"
