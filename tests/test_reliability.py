"""Faults: killed processes, torn writes, injected I/O errors, read-only and full disks."""

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from gigaseg.jobs.cli import cli
from gigaseg.jobs.segment import SegmentOptions, segment
from gigaseg.models.checkpoint import init_checkpoint
from tests.conftest import require, small_unet, write_tiff


@pytest.fixture
def scene(tmp_path, rng):
    tif = write_tiff(tmp_path / "s.tif", rng.integers(0, 200, (3, 384, 320)).astype(np.uint8))
    model = small_unet(tmp_path / "m.pt", seed=2)
    return tif, model


ARGS = ["--block", "64", "--chunk", "64", "--probabilities", "float16", "--batch-size", "2"]


def gigaseg(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "gigaseg", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw
    )


def read(path):
    group = zarr.open_group(str(path), mode="r")
    return group["mask"][:], group["probabilities"][:], group.attrs["gigaseg"]["complete"]


def blocks_written(store):
    done = store / "blocks_done"
    return len([p for p in done.glob("*") if not p.name.startswith(".")]) if done.exists() else 0


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, scene, rng):
    """Killed after a seeded random number of blocks (of 120), mid-write or between writes."""
    _, model = scene
    tif = write_tiff(tmp_path / "big.tif", rng.integers(0, 200, (3, 768, 640)).astype(np.uint8))
    assert gigaseg("segment", tif, "--model", model, "--out", tmp_path / "clean.zarr", *ARGS).wait() == 0
    clean_mask, clean_probs, _ = read(tmp_path / "clean.zarr")
    for seed in (1, 2, 3):
        out = tmp_path / f"killed{seed}.zarr"
        proc = gigaseg("segment", tif, "--model", model, "--out", out, *ARGS)
        kill_after = random.Random(seed).randint(3, 60)
        while proc.poll() is None and blocks_written(out) < kill_after:
            time.sleep(0.002)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert zarr.open_group(str(out), mode="r").attrs["gigaseg"]["complete"] is False
        assert CliRunner().invoke(cli, ["export", str(out), str(tmp_path / "x.tif")]).exit_code == 2
        resumed = gigaseg("segment", tif, "--model", model, "--out", out, "--resume", *ARGS)
        assert resumed.wait() == 0, resumed.stderr.read().decode()
        mask, probs, complete = read(out)
        assert complete is True
        assert np.array_equal(mask, clean_mask)
        assert np.array_equal(probs, clean_probs)
        assert not list(out.rglob("*.partial"))


def test_stray_partial_files_are_ignored_and_cleaned_on_resume(tmp_path, scene):
    tif, model = scene
    options = SegmentOptions(block=64, chunk=64, batch_size=2)
    segment(tif, model, tmp_path / "clean.zarr", options)
    out = tmp_path / "o.zarr"
    segment(tif, model, out, options)
    group = zarr.open_group(str(out), mode="r+")
    group["blocks_done"][2, 3] = 0
    group.attrs["gigaseg"] = {**group.attrs["gigaseg"], "complete": False}
    torn = out / "mask" / "2.3.0123abcd.partial"  # what a writer killed mid-chunk leaves
    torn.write_bytes(b"\x00" * 10)
    assert np.array_equal(zarr.open_array(str(out / "mask"))[:], zarr.open_array(str(tmp_path / "clean.zarr/mask"))[:])
    segment(tif, model, out, SegmentOptions(block=64, chunk=64, batch_size=2, resume=True))
    assert not torn.exists()
    assert np.array_equal(zarr.open_array(str(out / "mask"))[:], zarr.open_array(str(tmp_path / "clean.zarr/mask"))[:])


def test_an_injected_write_error_is_retried_and_recovers(tmp_path, scene, monkeypatch):
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import run_job

    tif, model = scene
    segment(tif, model, tmp_path / "clean.zarr", SegmentOptions(block=64, chunk=64, batch_size=2))
    (tmp_path / "job.yaml").write_text(
        f"inputs: [{tif}]\nmodel: {model}\noutput: {{dir: out}}\n"
        "tiling: {block: 64, chunk: 64, batch_size: 2}\ncluster: {workers: 2, retries: 2}\n"
    )
    monkeypatch.setenv("GIGASEG_FAIL_WRITE", f"{tmp_path / 'fault-fired'}:1,2")
    report = run_job(load_job(tmp_path / "job.yaml"), base=tmp_path)
    assert (tmp_path / "fault-fired").exists()
    assert report.ok
    assert report.scenes[0].blocks_retried >= 1
    got = zarr.open_array(str(tmp_path / "out" / "s_mask.zarr" / "mask"))[:]
    assert np.array_equal(got, zarr.open_array(str(tmp_path / "clean.zarr" / "mask"))[:])


def test_an_injected_write_error_without_retries_is_one_clear_line(tmp_path, scene, monkeypatch):
    tif, model = scene
    monkeypatch.setenv("GIGASEG_FAIL_WRITE", f"{tmp_path / 'fired'}:0,0")
    result = CliRunner().invoke(cli, ["segment", str(tif), "--model", str(model), "--out", str(tmp_path / "o.zarr")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("gigaseg: error: cannot write to")
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["gigaseg"]["complete"] is False


def mount_tmpfs(path, options):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    mounted = []
    yield mounted
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_output_directory(tmp_path, scene, mounts):
    tif, model = scene
    mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    mounts.append(tmp_path / "ro")
    result = CliRunner().invoke(cli, ["segment", str(tif), "--model", str(model), "--out", str(tmp_path / "ro/o.zarr")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"gigaseg: error: output directory {tmp_path / 'ro'} is not writable"


def test_full_disk_fails_clearly_and_leaves_an_incomplete_store(tmp_path, scene, mounts, rng):
    _, model = scene
    noise = write_tiff(tmp_path / "noise.tif", rng.integers(0, 255, (3, 600, 600)).astype(np.uint8))
    mount_tmpfs(tmp_path / "small", "size=200k")
    mounts.append(tmp_path / "small")
    out = tmp_path / "small" / "o.zarr"
    result = CliRunner().invoke(
        cli,
        [
            "segment",
            str(noise),
            "--model",
            str(model),
            "--out",
            str(out),
            "--probabilities",
            "float32",
            "--block",
            "128",
            "--chunk",
            "64",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    if out.exists():
        assert zarr.open_group(str(out), mode="r").attrs["gigaseg"]["complete"] is False


def test_fifty_scenes_on_two_workers_without_memory_growth(tmp_path, rng):
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import run_job

    (tmp_path / "scenes").mkdir()
    for i in range(50):
        write_tiff(tmp_path / "scenes" / f"s{i:02d}.tif", rng.integers(0, 200, (3, 64, 80)).astype(np.uint8))
    init_checkpoint(tmp_path / "m.pt", arch="conv", in_channels=3, classes=["a", "b"], tile=32, overlap=8)
    (tmp_path / "job.yaml").write_text(
        "inputs: ['scenes/*.tif']\nmodel: m.pt\noutput: {dir: out}\ntiling: {block: 64, chunk: 32}\n"
        "cluster: {workers: 2}\n"
    )
    report = run_job(load_job(tmp_path / "job.yaml"), base=tmp_path)
    assert report.ok
    assert len(report.scenes) == 50
    assert all(s.status == "done" and sum(s.counts.values()) == 64 * 80 for s in report.scenes)
    first = np.mean([s.worker_rss_mb for s in report.scenes[:10]])
    last = np.mean([s.worker_rss_mb for s in report.scenes[-10:]])
    assert last <= first * 1.10 + 20, f"worker memory grew from {first:.0f} MB to {last:.0f} MB"
