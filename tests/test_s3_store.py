"""Mask stores on object storage: ``--out s3://bucket/out.zarr`` keeps every contract of a store on disk.

Against moto's S3 server on loopback (the ``s3`` fixture of ``tests/servers.py``), and
the main contracts again on SeaweedFS (``seaweedfs``), a second S3 implementation:
a COG on S3 in, a Zarr store on S3 out, equal bit for bit to a local run's;
``verify``/``info``; refusal of an existing output and ``--overwrite``; the lock
object (conditional PUT, heartbeat, staleness); SIGKILL then ``--resume``; export
to a COG and to NIfTI on S3.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import zarr

from tests.conftest import UTM, one_error, run, small_unet, write_tiff

ARGS = ["--block", "256", "--chunk", "128", "--probabilities", "float16", "--batch-size", "2"]


def read(store):
    group = zarr.open_group(str(store), mode="r")
    return group["mask"][...], group["probabilities"][...], group.attrs["gigaseg"]["complete"]


def s3fs_():
    import s3fs

    return s3fs.S3FileSystem()


def upload_input(s3, cog):
    """The COG on S3, as ``s3://bucket/scenes/in.tif``."""
    source = f"{s3}/scenes/in.tif"
    s3fs_().put(str(cog), source)
    return source


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 768 x 768 COG (9 blocks of 256), a small U-Net and the store of a local run."""
    d = tmp_path_factory.mktemp("s3ref")
    rng = np.random.default_rng(77)
    plain = write_tiff(d / "plain.tif", rng.integers(0, 200, (3, 768, 768)).astype(np.uint8))
    cog = d / "cog.tif"
    rasterio.shutil.copy(plain, cog, driver="COG", blocksize=256)
    model = small_unet(d / "m.pt", seed=2)
    local = d / "local.zarr"
    result = run("segment", cog, "--model", model, "--out", local, *ARGS)
    assert result.exit_code == 0, result.output
    return cog, model, local


@pytest.fixture
def small(tmp_path, rng):
    """A one-block scene for the tests of refusals and locks."""
    tif = write_tiff(tmp_path / "small.tif", rng.integers(0, 200, (3, 128, 128)).astype(np.uint8))
    return tif, small_unet(tmp_path / "m.pt", seed=2)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_cog_on_s3_or_on_disk_to_zarr_on_s3_is_bit_identical_with_a_local_run(s3, reference, where):
    cog, model, local = reference
    source = upload_input(s3, cog) if where == "s3" else str(cog)
    out = f"{s3}/masks/out.zarr"
    result = run("segment", source, "--model", model, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{out}: ")
    mask, probs, complete = read(out)
    clean_mask, clean_probs, _ = read(local)
    assert complete is True
    assert np.array_equal(mask, clean_mask) and np.array_equal(probs, clean_probs)
    assert not s3fs_().exists(f"{out}.lock")  # released

    verified = run("verify", out)
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.strip() == f"{out}: 72 chunks match their checksums"
    info = run("info", out, "--json", "--verify")
    assert info.exit_code == 0, info.output
    record = json.loads(info.stdout)
    assert record["path"] == out and record["complete"] is True and record["blocks_done"] == "9/9"
    assert record["shape"] == [768, 768] and record["crs"] == "WGS 84 / UTM zone 33N"
    assert record["verified"] == "72 chunks match their checksums"


def test_an_existing_s3_output_is_refused_and_replaced_with_overwrite(s3, small):
    tif, model = small
    out = f"{s3}/out.zarr"
    assert run("segment", tif, "--model", model, "--out", out).exit_code == 0
    fs = s3fs_()
    fs.pipe(f"{out}/mask/stray", b"left by someone")
    one_error(run("segment", tif, "--model", model, "--out", out), f"output {out} exists", "--overwrite")
    one_error(run("segment", tif, "--model", model, "--out", out, "--dry-run"), "exists; pass --overwrite")
    result = run("segment", tif, "--model", model, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    fs.invalidate_cache()
    assert not fs.exists(f"{out}/mask/stray")  # the old store went whole
    assert read_complete(out)
    fs.pipe(f"{s3}/notes/.keep", b"")
    one_error(run("segment", tif, "--model", model, "--out", f"{s3}/notes", "--overwrite"), "not a gigaseg Zarr store")
    missing = "s3://no-such-bucket-for-gigaseg/out.zarr"
    one_error(run("segment", tif, "--model", model, "--out", missing), "s3://no-such-bucket-for-gigaseg", "not exist")


def test_folder_markers_left_where_a_store_was_are_nothing(s3, small):
    """SeaweedFS keeps an empty ``dir/`` object for each "directory" whose objects were deleted
    (the AWS console makes such folder markers too): a removed store is not an existing output."""
    from gigaseg.io.location import exists

    tif, model = small
    out = f"{s3}/gone.zarr"
    fs = s3fs_()
    fs.pipe({f"{out}/": b"", f"{out}/mask/": b"", f"{out}/mask_crc32/": b""})
    assert not exists(out)
    result = run("segment", tif, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    assert exists(out) and read_complete(out)
    fs.pipe(f"{s3}/other.zarr/mask/0.0", b"a chunk, not a marker")
    assert exists(f"{s3}/other.zarr")
    # an object named as the output's prefix is another key: a cut-short store under the prefix
    # is replaced, and that object stays as it was
    fs.pipe({f"{s3}/named.zarr": b"user data", f"{s3}/named.zarr/mask/.zarray": b"{}"})
    result = run("segment", tif, "--model", model, "--out", f"{s3}/named.zarr")
    assert result.exit_code == 0, result.output
    fs.invalidate_cache()
    assert fs.cat(f"{s3}/named.zarr") == b"user data" and read_complete(f"{s3}/named.zarr")


def test_seaweedfs_a_second_s3_server_keeps_the_same_contracts(seaweedfs, reference):
    """SeaweedFS serves ranges as S3 does and keeps folder markers for emptied "directories":
    a COG in and a store out there equal a local run's, ``--overwrite`` and a rerun after the
    store is removed find no leftover, and the lock's conditional PUT refuses a second holder."""
    from gigaseg.io.location import remove_tree
    from gigaseg.io.lock import StoreLock

    cog, model, local = reference
    source = upload_input(seaweedfs, cog)
    out = f"{seaweedfs}/masks/out.zarr"
    for extra in ([], ["--overwrite"]):
        result = run("segment", source, "--model", model, "--out", out, *ARGS, *extra)
        assert result.exit_code == 0, result.output
    mask, probs, complete = read(out)
    clean_mask, clean_probs, _ = read(local)
    assert complete is True
    assert np.array_equal(mask, clean_mask) and np.array_equal(probs, clean_probs)
    assert run("verify", out).stdout.strip() == f"{out}: 72 chunks match their checksums"
    fs = s3fs_()
    fs.rm(out, recursive=True)  # every object, as another tool deletes them: SeaweedFS keeps the
    fs.invalidate_cache()  # directories (masks/out.zarr/mask/, ...) and lists them
    assert fs.ls(out)
    result = run("segment", source, "--model", model, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    assert read_complete(out)
    with StoreLock(out):
        one_error(run("segment", source, "--model", model, "--out", out, *ARGS, "--resume"), "is being written by")
    cog = f"{seaweedfs}/cogs/out.tif"  # staged in cogs/.out.tif.zarr, removed with its directories
    result = run("segment", source, "--model", model, "--out", cog, *ARGS)
    assert result.exit_code == 0, result.output
    fs.invalidate_cache()
    assert fs.ls(f"{seaweedfs}/cogs") == [cog.removeprefix("s3://")]
    remove_tree(f"{seaweedfs}/masks")
    fs.invalidate_cache()
    assert not fs.exists(f"{seaweedfs}/masks")
    nested = f"{seaweedfs}/masks/nested.zarr"  # deleting deep/er/ makes SeaweedFS keep deep/: a level a pass
    fs.pipe(f"{nested}/deep/er/", b"")
    result = run("segment", source, "--model", model, "--out", nested, *ARGS)
    assert result.exit_code == 0 and "not recognized" not in result.output, result.output
    fs.invalidate_cache()
    assert not [name for name in fs.ls(nested) if "deep" in name]


def test_a_store_cut_short_while_made_on_s3_is_made_again_by_the_plain_rerun(s3, small):
    import gigaseg.io.store as store_module

    tif, model = small
    out = f"{s3}/cut.zarr"
    write = store_module.write_files

    def killed_before_the_group(path, files):
        if ".zgroup" in files or "zarr.json" in files:
            raise KeyboardInterrupt  # SIGINT between the two batches of PUTs
        write(path, files)

    from gigaseg import segment

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "write_files", killed_before_the_group)
        with pytest.raises(KeyboardInterrupt):
            segment(tif, model, out)
    fs = s3fs_()
    fs.invalidate_cache()
    assert fs.exists(f"{out}/mask/.zarray") and not fs.exists(f"{out}/.zgroup")
    for flags in ([], ["--resume"]):
        result = run("segment", tif, "--model", model, "--out", out, *flags)
        assert result.exit_code == 0, result.output
    assert read_complete(out)


def read_complete(out):
    return zarr.open_group(out, mode="r").attrs["gigaseg"]["complete"] is True


HOLD = (
    "from gigaseg.io.lock import StoreLock; import sys, time; "
    "StoreLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
)


def test_a_second_writer_is_refused_while_the_first_holds_the_s3_lock(s3, small):
    from gigaseg.io.lock import ObjectStoreLock, StoreLock, read_lock

    tif, model = small
    out = f"{s3}/o.zarr"
    assert isinstance(StoreLock(out), ObjectStoreLock)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        record = read_lock(f"{out}.lock")
        assert record["pid"] == holder.pid and isinstance(record["heartbeat"], float)
        line = one_error(run("segment", tif, "--model", model, "--out", out), "is being written by")
        assert f"PID {holder.pid}" in line and f"{out}.lock" in line
        one_error(run("segment", tif, "--model", model, "--out", out, "--overwrite"), f"PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    result = run("segment", tif, "--model", model, "--out", out)  # its process is gone: stale on this host
    assert result.exit_code == 0, result.output
    assert "took over the stale lock" in result.stderr and "its process is gone" in result.stderr
    assert not s3fs_().exists(f"{out}.lock")


def test_a_lock_without_a_heartbeat_for_two_minutes_is_taken_over_with_a_warning(s3, small):
    from gigaseg.io.lock import STALE_S

    tif, model = small
    out = f"{s3}/o.zarr"
    fs = s3fs_()
    record = {"host": "node-17", "pid": 4242, "since": "2026-11-30T00:00:00+00:00", "token": "x"}
    fs.pipe(f"{out}.lock", json.dumps({**record, "heartbeat": time.time() - 5}).encode())
    one_error(run("segment", tif, "--model", model, "--out", out), "PID 4242 on node-17")
    fs.pipe(f"{out}.lock", json.dumps({**record, "heartbeat": time.time() - STALE_S - 5}).encode())
    result = run("segment", tif, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    assert "took over the stale lock" in result.stderr and "no heartbeat for 12" in result.stderr
    fs.invalidate_cache()
    assert not fs.exists(f"{out}.lock")


def test_the_heartbeat_rewrites_the_lock_object_and_release_keeps_a_lock_not_ours(s3, monkeypatch):
    from gigaseg.io import lock as locks

    out = f"{s3}/o.zarr"
    held = locks.StoreLock(out).acquire()
    try:
        first = locks.read_lock(held.path)["heartbeat"]
        time.sleep(0.01)
        held.beat()
        assert locks.read_lock(held.path)["heartbeat"] > first
        s3fs_().pipe(held.path, json.dumps({**locks.read_lock(held.path), "token": "theirs"}).encode())
        with pytest.warns(UserWarning, match="lost the lock"):
            held.beat()
    finally:
        held.release()
    assert locks.read_lock(held.path)["token"] == "theirs"  # another writer's: left alone


def blocks_written(fs, out):
    try:
        return len([p for p in fs.ls(f"{out}/blocks_done", refresh=True) if not p.rsplit("/", 1)[-1].startswith(".")])
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("where", ["s3", "local"])
def test_sigkill_on_s3_then_resume_is_bit_identical_with_a_local_run(s3, reference, where):
    """COG on S3 (or on disk) -> Zarr on S3, killed after some of its 9 blocks, resumed; as on disk."""
    cog, model, local = reference
    fs = s3fs_()
    source = upload_input(s3, cog) if where == "s3" else str(cog)
    out = f"{s3}/out.zarr"
    command = [sys.executable, "-m", "gigaseg", "segment", source, "--model", str(model), "--out", out, *ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and blocks_written(fs, out) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, _, complete = read(out)
    assert complete is False
    assert fs.exists(f"{out}.lock")  # left by the killed writer
    one_error(run("export", out, f"{s3}/x.tif"), "incomplete")
    changed = run("segment", source, "--model", model, "--out", out, *ARGS, "--resume", "--tile", "96")
    one_error(changed, "cannot resume", "options.plan.tile")  # the fingerprint, kept in the store's attributes
    assert "took over the stale lock" in changed.stderr and "its process is gone" in changed.stderr
    resumed = run("segment", source, "--model", model, "--out", out, *ARGS, "--resume")
    assert resumed.exit_code == 0, resumed.output
    mask, probs, complete = read(out)
    clean_mask, clean_probs, _ = read(local)
    assert complete is True
    assert np.array_equal(mask, clean_mask) and np.array_equal(probs, clean_probs)
    summary = zarr.open_group(out, mode="r").attrs["gigaseg"]["summary"]
    assert summary["blocks_skipped"] >= 3 and summary["pixels"] == 768 * 768
    assert run("verify", out).exit_code == 0


def test_export_reads_and_writes_object_storage(s3, reference, tmp_path):
    cog, model, local = reference
    expected, _, _ = read(local)
    store = f"{s3}/stores/local-copy.zarr"
    s3fs_().put(str(local), store, recursive=True)  # the store of the local run, on S3
    for source, target in ((store, f"{s3}/cogs/x.tif"), (str(local), f"{s3}/cogs/y.tif"), (store, tmp_path / "z.tif")):
        result = run("export", source, target)
        assert result.exit_code == 0, result.output
        with rasterio.open(str(target)) as src:  # rasterio maps s3:// to GDAL's /vsis3/
            assert src.crs == rasterio.crs.CRS.from_string(UTM)
            assert src.nodata == 255 and src.tags(1)["CLASSES"] == "a,b,c"
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert np.array_equal(src.read(1), expected)
    one_error(run("export", store, f"{s3}/cogs/x.tif"), "exists", "--overwrite")
    assert run("export", store, f"{s3}/cogs/x.tif", "--overwrite").exit_code == 0
    one_error(run("export", store, f"{s3}/cogs/x.png"), "must end in .tif")
    one_error(run("export", f"{s3}/stores/missing.zarr", f"{s3}/cogs/m.tif"), "missing.zarr does not exist")


def test_a_volume_exports_to_nifti_on_object_storage(s3, tmp_path):
    import nibabel as nib

    from tests.conftest import conv3d_checkpoint, organ_nifti

    volume = organ_nifti(tmp_path / "ct.nii.gz")
    model = conv3d_checkpoint(tmp_path / "m3.pt")
    out = f"{s3}/ct.zarr"
    result = run("segment", volume, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    target = f"{s3}/ct-mask.nii.gz"
    assert run("export", out, target).exit_code == 0, "export to NIfTI on S3"
    s3fs_().get(target, str(tmp_path / "back.nii.gz"))
    image = nib.load(tmp_path / "back.nii.gz")
    mask = zarr.open_group(out, mode="r")["mask"][...]
    assert np.array_equal(np.asarray(image.dataobj), mask.T)  # NIfTI (i, j, k) is the store's (z, y, x) reversed
    assert np.allclose(image.affine, nib.load(volume).affine)
