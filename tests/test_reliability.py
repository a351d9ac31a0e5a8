"""Faults: killed processes, torn writes, injected I/O errors, read-only and full disks."""

import contextlib
import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import zarr
from click.testing import CliRunner

from gigaseg import SegmentOptions, segment
from gigaseg.jobs.cli import cli
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


@pytest.mark.slow
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


def gone(process):
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def command(process):
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
def test_sigkill_during_refinement_leaves_no_process_behind(tmp_path, scene):
    """The refinement pool's workers and multiprocessing's resource tracker die with their parent."""
    tif, model = scene
    out = tmp_path / "o.zarr"
    refine = ["--refine", "crf", "--refine-block", "64", "--refine-workers", "2"]
    proc = gigaseg("segment", tif, "--model", model, "--out", out, *ARGS, *refine)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers = []
    while proc.poll() is None and len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        workers = [p for p in parent.children() if "spawn_main" in command(p)]
    assert proc.poll() is None and len(workers) >= 2, "the refinement pool did not start"
    descendants = parent.children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while not all(map(gone, descendants)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [command(p)[:100] for p in descendants if not gone(p)]
    for p in descendants:
        if not gone(p):
            p.kill()
    assert not left, f"still running after their parent was killed: {left}"


@pytest.mark.slow
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


@pytest.mark.slow
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
    # it failed before any block was written: no store and no lock are left to block the rerun
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.lock").exists()


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


def fill(directory):
    """Write zeros into ``directory`` until its file system is full."""
    with contextlib.suppress(OSError), open(directory / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@pytest.fixture
def store(tmp_path, rng):
    """A small finished mask store."""
    tif = write_tiff(tmp_path / "small.tif", rng.integers(0, 200, (3, 96, 80)).astype(np.uint8))
    init_checkpoint(tmp_path / "conv.pt", arch="conv", in_channels=3, classes=["a", "b"], tile=32, overlap=8)
    segment(tif, tmp_path / "conv.pt", tmp_path / "o.zarr", SegmentOptions(block=64, chunk=32))
    return tmp_path / "o.zarr"


@pytest.mark.slow
def test_export_into_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, store, mounts):
    mount_tmpfs(tmp_path / "full", "size=64k")
    mounts.append(tmp_path / "full")
    fill(tmp_path / "full")
    out = tmp_path / "full" / "mask.tif"
    proc = subprocess.run(
        [sys.executable, "-m", "gigaseg", "export", str(store), str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"gigaseg: error: cannot write {out}: No space left on device\n"  # libtiff's lines too
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["filler"]  # no output, no temporaries
    (tmp_path / "full" / "filler").unlink()
    assert CliRunner().invoke(cli, ["export", str(store), str(out)]).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["mask.tif"]


@pytest.mark.slow
def test_user_errors_on_workers_are_one_line_per_scene_without_tracebacks(tmp_path, scene):
    """A truncated scene fails on the workers (its header reads fine), an empty one on the driver."""
    tif, model = scene
    (tmp_path / "scenes").mkdir()
    data = tif.read_bytes()
    (tmp_path / "scenes" / "truncated.tif").write_bytes(data[: len(data) // 3])
    (tmp_path / "scenes" / "empty.tif").write_bytes(b"")
    (tmp_path / "scenes" / "good.tif").write_bytes(data)
    (tmp_path / "job.yaml").write_text(
        f"inputs: ['scenes/*.tif']\nmodel: {model}\noutput: {{dir: out}}\n"
        "tiling: {block: 128, chunk: 64, batch_size: 2}\ncluster: {workers: 2, retries: 3}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "gigaseg", "run", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Compute Failed" not in proc.stderr
    errors = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 2, proc.stdout
    assert errors[0].startswith(f"error: cannot read {tmp_path / 'scenes' / 'empty.tif'} as a raster")
    assert errors[1].startswith("error: cannot read rows 0-63, columns ")  # at once, not "block failed after retries"
    report = json.loads((tmp_path / "out" / "gigaseg-run-report.json").read_text())
    assert [s["status"] for s in report["scenes"]] == ["failed", "done", "failed"]


@pytest.mark.parametrize("reader", [pytest.param("head -1", marks=pytest.mark.slow), "gone"])
def test_a_closed_stdout_pipe_ends_quietly(store, reader):
    """``gigaseg info S | head -1``; "gone": the reader closed the pipe before anything was written."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gigaseg", "info", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if reader == "gone":
        proc.stdout.close()
    else:
        head = subprocess.run(reader.split(), stdin=proc.stdout, capture_output=True, text=True, check=True)
        proc.stdout.close()
        assert head.stdout == f"path: {store}\n"
    rc, stderr = proc.wait(timeout=120), proc.stderr.read().decode()
    assert stderr == ""
    assert rc == 141 if reader == "gone" else rc in (0, 141)  # 141 when head left before the last line


@pytest.mark.slow
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


# --- integrity: fingerprints, locks, checksums ---------------------------------------------


def segment_cli(tif, model, out, *extra):
    return CliRunner().invoke(cli, ["segment", str(tif), "--model", str(model), "--out", str(out), *ARGS, *extra])


def one_error(result, *words):
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("gigaseg: warning:")]
    assert len(errors) == 1 and errors[0].startswith("gigaseg: error:"), result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def half_done(tif, model, out, *extra):
    """A store as a run killed half way leaves it: blocks done up to half, incomplete."""
    assert segment_cli(tif, model, out, *extra).exit_code == 0
    store = zarr.open_group(str(out), mode="r+")
    flags = store["blocks_done"][...]
    flags.reshape(-1)[flags.size // 2 :] = 0
    store["blocks_done"][...] = flags
    store.attrs["gigaseg"] = {**store.attrs["gigaseg"], "complete": False}


@pytest.mark.parametrize(
    "change",
    [
        "weights",
        pytest.param("pixels", marks=pytest.mark.slow),
        pytest.param("bands", marks=pytest.mark.slow),
        pytest.param("tile", marks=pytest.mark.slow),
        pytest.param("blend", marks=pytest.mark.slow),
    ],
)
def test_resume_refuses_what_changed_and_names_it(tmp_path, rng, change):
    image = rng.integers(0, 200, (5, 256, 192)).astype(np.uint8)
    tif = write_tiff(tmp_path / "s.tif", image)
    model = small_unet(tmp_path / "m.pt", seed=2)
    out = tmp_path / "o.zarr"
    half_done(tif, model, out, "--bands", "1,2,3")
    extra = ["--bands", "1,2,3"]
    if change == "pixels":  # the same file name, other pixels
        time.sleep(0.01)
        write_tiff(tif, rng.integers(0, 200, image.shape).astype(np.uint8))
        named = "input."
    elif change == "weights":  # the same card, other weights
        small_unet(model, seed=3)
        named = "weights.sha256"
    elif change == "bands":
        extra = ["--bands", "3,4,5"]
        named = "options.source.bands"
    elif change == "tile":
        extra += ["--tile", "96"]
        named = "options.plan.tile"
    else:
        extra += ["--blend", "constant"]
        named = "options.plan.blend"
    before = zarr.open_group(str(out), mode="r")["mask"][...]
    one_error(segment_cli(tif, model, out, "--resume", *extra), "cannot resume", named)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["gigaseg"]["complete"] is False
    assert np.array_equal(group["mask"][...], before)


@pytest.mark.slow
def test_resume_with_the_same_input_finishes_and_counts_every_block(tmp_path, scene):
    tif, model = scene
    out, clean = tmp_path / "o.zarr", tmp_path / "clean.zarr"
    assert segment_cli(tif, model, clean).exit_code == 0
    half_done(tif, model, out)
    os_touch_later(tif, 0)  # an identical file: same size, time and bytes
    assert segment_cli(tif, model, out, "--resume").exit_code == 0
    summary = zarr.open_group(str(out), mode="r").attrs["gigaseg"]["summary"]
    expected = zarr.open_group(str(clean), mode="r").attrs["gigaseg"]["summary"]
    assert summary["pixels"] == 384 * 320 and summary["counts"] == expected["counts"]
    assert summary["blocks_skipped"] > 0


def os_touch_later(path, seconds):
    import os

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + int(seconds * 1e9)))


@pytest.mark.slow
def test_a_touched_input_resumes_when_small_and_is_refused_when_sampled(tmp_path, scene, monkeypatch):
    """Up to 64 MiB an input is hashed whole, so a copy without its times is the same file;
    beyond, only samples are hashed and the time tells an edit between them."""
    tif, model = scene
    out = tmp_path / "o.zarr"
    half_done(tif, model, out)
    os_touch_later(tif, 5)
    assert segment_cli(tif, model, out, "--resume").exit_code == 0
    monkeypatch.setattr("gigaseg.io.identity.WHOLE", 0)
    out = tmp_path / "sampled.zarr"
    half_done(tif, model, out)
    os_touch_later(tif, 5)
    one_error(segment_cli(tif, model, out, "--resume"), "input.mtime_ns")


def test_an_edit_between_the_samples_of_a_small_file_is_found(tmp_path, scene):
    """The red team's case: other bytes, the same size, the time put back."""
    import os

    tif, model = scene
    out = tmp_path / "o.zarr"
    half_done(tif, model, out)
    stat = tif.stat()
    data = bytearray(tif.read_bytes())
    data[len(data) // 2 + 1234] ^= 0xFF
    tif.write_bytes(bytes(data))
    os.utime(tif, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    one_error(segment_cli(tif, model, out, "--resume"), "input.sha256")


def test_resume_refuses_a_store_without_a_fingerprint(tmp_path, scene):
    tif, model = scene
    out = tmp_path / "o.zarr"
    half_done(tif, model, out)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["gigaseg"] = {k: v for k, v in group.attrs["gigaseg"].items() if k != "fingerprint"}
    one_error(segment_cli(tif, model, out, "--resume"), "without a fingerprint")


HOLD = (
    "from gigaseg.io.lock import StoreLock; import sys, time; "
    "StoreLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def holder(tmp_path):
    """Another live process that holds the lock of tmp_path/o.zarr."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "o.zarr")], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_store_a_live_writer_holds_is_refused_even_with_overwrite(tmp_path, scene, holder):
    tif, model = scene
    out = tmp_path / "o.zarr"
    line = one_error(segment_cli(tif, model, out, "--overwrite"), "is being written by", f"PID {holder.pid}")
    assert "o.zarr.lock" in line
    one_error(segment_cli(tif, model, out, "--resume"), "is being written by")
    holder.kill()
    holder.wait()
    result = segment_cli(tif, model, out, "--overwrite")  # the holder is gone: its lock is stale
    assert result.exit_code == 0, result.output
    assert "took over the stale lock" in result.stderr and f"PID {holder.pid}" in result.stderr
    assert not (tmp_path / "o.zarr.lock").exists()


@pytest.mark.slow
def test_two_writers_at_once_one_is_refused(tmp_path, scene):
    """The race of the issue: a second --overwrite while the first is still writing."""
    tif, model = scene
    out = tmp_path / "o.zarr"
    first = gigaseg("segment", tif, "--model", model, "--out", out, *ARGS)
    while first.poll() is None and blocks_written(out) < 2:
        time.sleep(0.005)
    assert first.poll() is None, "the first run finished before the second started"
    second = segment_cli(tif, small_unet(tmp_path / "other.pt", seed=5), out, "--overwrite")
    one_error(second, "is being written by", f"PID {first.pid}")
    assert first.wait() == 0
    attrs = zarr.open_group(str(out), mode="r").attrs["gigaseg"]
    assert attrs["complete"] is True and attrs["model"].endswith("m.pt")


def test_a_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path, scene):
    import os

    from gigaseg.io.lock import STALE_S, lock_path

    tif, model = scene
    out = tmp_path / "o.zarr"
    lock = lock_path(out)
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "since": "2026-11-30T00:00:00+00:00", "token": "x"}))
    one_error(segment_cli(tif, model, out), "PID 4242 on node-17")
    old = time.time() - STALE_S - 5
    os.utime(lock, (old, old))
    result = segment_cli(tif, model, out)
    assert result.exit_code == 0 and "no heartbeat for" in result.stderr


def test_a_job_driver_holds_the_locks_of_its_scenes(tmp_path, scene, holder):
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import run_job

    tif, model = scene
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"inputs: [{tif}]\nmodel: {model}\noutput: {{dir: {tmp_path}, name: 'o.zarr'}}\n"
        "tiling: {block: 64, chunk: 64}\ncluster: {workers: 1}\n"
    )
    report = run_job(load_job(job_file), base=tmp_path)
    assert report.scenes[0].status == "failed" and "is being written by" in report.scenes[0].error


def truncate_a_chunk(store, name="mask", key="0.0"):
    chunk = store / name / key
    chunk.write_bytes(chunk.read_bytes()[:10])


@pytest.fixture
def finished(tmp_path, scene):
    tif, model = scene
    out = tmp_path / "o.zarr"
    assert segment_cli(tif, model, out).exit_code == 0
    return tif, model, out


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        *[pytest.param(d, marks=pytest.mark.slow) for d in ("deleted", "flipped", "probabilities", "checksum deleted")],
    ],
)
def test_damaged_chunks_are_found_refused_by_export_and_rewritten_by_resume(tmp_path, finished, damage):
    tif, model, out = finished
    clean = read(out)
    if damage == "truncated":
        truncate_a_chunk(out, key="1.2")
    elif damage == "deleted":
        (out / "mask" / "1.2").unlink()
    elif damage == "flipped":  # still decodes: other labels in the chunk
        group = zarr.open_group(str(out), mode="r+")
        group["mask"][64:128, 128:192] = np.where(group["mask"][64:128, 128:192] == 0, 1, 0)
    elif damage == "probabilities":
        truncate_a_chunk(out, "probabilities", "0.1.2")
    else:
        (out / "mask_crc32" / "1.2").unlink()
    runner = CliRunner()
    assert "chunk [1, 2]" in one_error(runner.invoke(cli, ["verify", str(out)]), "do not hold what was written")
    one_error(runner.invoke(cli, ["info", str(out), "--verify"]), "chunk [1, 2]")
    if damage != "probabilities":  # export reads the mask only
        one_error(runner.invoke(cli, ["export", str(out), str(tmp_path / "x.tif")]), "mask chunk [1, 2]")
        assert not list(tmp_path.glob("*x.tif*"))
    resumed = segment_cli(tif, model, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "writing blocks [(1, 2)] again" in resumed.stderr
    ok = runner.invoke(cli, ["verify", str(out)])
    assert ok.exit_code == 0 and "60 chunks match" in ok.stdout
    mask, probs, complete = read(out)
    assert complete and np.array_equal(mask, clean[0]) and np.array_equal(probs, clean[1])


def test_verify_passes_a_sound_store_and_tells_apart_unwritten_blocks(tmp_path, finished):
    tif, model, out = finished
    result = CliRunner().invoke(cli, ["verify", str(out)])
    assert result.exit_code == 0 and result.stdout.strip().endswith("60 chunks match their checksums")
    half = tmp_path / "half.zarr"
    half_done(tif, model, half)
    result = CliRunner().invoke(cli, ["verify", str(half)])
    assert result.exit_code == 0 and "INCOMPLETE: 15 of 30 blocks written" in result.stdout


def test_a_deleted_coordinate_chunk_is_damage_that_resume_writes_again(tmp_path, finished):
    """Coordinates have no checksum: a deleted chunk reads as NaN, which verify names and resume
    writes again from the mask's georeferencing (found by a red-team pass: resume said complete)."""
    tif, model, out = finished
    before = zarr.open_group(str(out), mode="r")["x"][:]
    (out / "x" / "0").unlink()
    runner = CliRunner()
    assert "its x coordinates are missing" in one_error(runner.invoke(cli, ["verify", str(out)]), "is damaged")
    resumed = segment_cli(tif, model, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert np.array_equal(zarr.open_group(str(out), mode="r")["x"][:], before)
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0


def garble(path):
    data = bytearray(path.read_bytes())
    data[10:14] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "done lost",
        *[
            pytest.param(d, marks=pytest.mark.slow)
            for d in ("blocks_done garbled", "block_counts garbled")
            + ("mask_crc32 deleted", "probabilities_crc32 deleted")
        ],
    ],
)
def test_damaged_records_are_one_line_and_resume_repairs_them(tmp_path, finished, damage):
    import shutil

    tif, model, out = finished
    clean = read(out)
    if damage == "blocks_done garbled":
        garble(out / "blocks_done" / "1.1")
    elif damage == "block_counts garbled":
        garble(out / "block_counts" / "1.1.0")
    elif damage == "done lost":  # the store says complete, its records disagree
        (out / "blocks_done" / "1.1").unlink()
    else:
        shutil.rmtree(out / damage.split()[0])
    runner = CliRunner()
    line = one_error(runner.invoke(cli, ["verify", str(out)]))
    assert "is damaged" in line or "do not hold what was written" in line, line
    resumed = segment_cli(tif, model, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Traceback" not in resumed.output and "not recognized" not in resumed.output
    ok = runner.invoke(cli, ["verify", str(out)])
    assert ok.exit_code == 0 and "60 chunks match" in ok.stdout, ok.output
    mask, probs, complete = read(out)
    assert complete and np.array_equal(mask, clean[0]) and np.array_equal(probs, clean[1])
    summary = zarr.open_group(str(out), mode="r").attrs["gigaseg"]["summary"]
    assert summary["pixels"] == 384 * 320


@pytest.mark.parametrize("name", [".zattrs", pytest.param(".zmetadata", marks=pytest.mark.slow)])
def test_unreadable_store_metadata_is_one_line(finished, name):
    _, _, out = finished
    (out / name).write_text("{garbage")
    for args in (["verify", str(out)], ["info", str(out)], ["export", str(out), str(out.parent / "x.tif")]):
        one_error(CliRunner().invoke(cli, args), "metadata cannot be read")


def test_refine_refuses_a_damaged_store_and_resume_refine_one_without_probabilities(tmp_path, scene):
    tif, model = scene
    with_probs = tmp_path / "p.zarr"
    assert segment_cli(tif, model, with_probs).exit_code == 0
    (with_probs / "mask" / "1.1").unlink()
    refine = ["refine", str(with_probs), "--image", str(tif), "--method", "superpixel", "--refine-workers", "1"]
    one_error(CliRunner().invoke(cli, refine), "mask chunk [1, 1]")
    bare = tmp_path / "bare.zarr"
    assert CliRunner().invoke(cli, ["segment", str(tif), "--model", str(model), "--out", str(bare)]).exit_code == 0
    before = json.loads((bare / ".zattrs").read_text())
    resumed = CliRunner().invoke(
        cli, ["segment", str(tif), "--model", str(model), "--out", str(bare), "--resume", "--refine", "superpixel"]
    )
    one_error(resumed, "keeps no probabilities")
    assert json.loads((bare / ".zattrs").read_text()) == before


@pytest.mark.slow
def test_a_symbolic_link_to_a_store_shares_its_lock_and_is_not_overwritten(tmp_path, finished):
    tif, model, out = finished
    link = tmp_path / "link.zarr"
    link.symlink_to(out)
    one_error(segment_cli(tif, model, link, "--overwrite"), "is a symbolic link")
    from gigaseg.io.lock import lock_path

    assert lock_path(link) == lock_path(out) == lock_path(f"{out}/")


@pytest.mark.parametrize("content", ['{"host": "vm", "pid": "abc"}', "[1, 2]", "", "dir"])
def test_a_lock_file_gigaseg_did_not_write_is_one_line_then_stale(tmp_path, scene, content):
    import os

    tif, model = scene
    out = tmp_path / "o.zarr"
    lock = tmp_path / "o.zarr.lock"
    lock.mkdir() if content == "dir" else lock.write_text(content)
    one_error(segment_cli(tif, model, out), "o.zarr.lock")
    old = time.time() - 1000
    os.utime(lock, (old, old))
    result = segment_cli(tif, model, out)
    if content == "dir":  # never removed on a guess
        one_error(result, "not a lock file gigaseg wrote")
    else:
        assert result.exit_code == 0 and "took over the stale lock" in result.stderr
    assert not list(tmp_path.glob("*.stale-*"))


def test_a_dry_run_fails_what_the_run_would_refuse(tmp_path, finished):
    tif, model, out = finished
    runner = CliRunner()
    dry = ["segment", str(tif), "--model", str(model), "--out", str(out), *ARGS, "--dry-run"]
    one_error(runner.invoke(cli, dry), "exists; pass --overwrite")
    assert runner.invoke(cli, [*dry, "--resume"]).exit_code == 0
    one_error(runner.invoke(cli, [*dry, "--resume", "--blend", "cosine"]), "options.plan.blend")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"inputs: [{tif}]\nmodel: {model}\noutput: {{dir: {tmp_path}, name: 'o.zarr'}}\n"
        "tiling: {block: 64, chunk: 64, blend: cosine}\n"
    )
    one_error(runner.invoke(cli, ["run", str(job), "--dry-run"]), "would fail")
    result = runner.invoke(cli, ["run", str(job), "--dry-run", "--resume"])
    assert result.exit_code == 2 and "options.plan.blend" in result.output
