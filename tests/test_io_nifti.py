"""NIfTI sources against nibabel as the oracle: axes, scaling, 4-D, cache, bad files."""

import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gigaseg.errors import InputError, SourceError
from gigaseg.io.geotiff import GigasegWarning
from gigaseg.io.nifti import NiftiSource
from gigaseg.io.niftiref import NiftiRef
from gigaseg.tiler import Box
from tests.conftest import OBLIQUE, organ_nifti, write_nifti


def whole(source):
    return source.read(Box((0, 0, 0), source.shape))[0]


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
@pytest.mark.parametrize("version", [1, 2])
def test_voxels_are_nibabels_scaled_data_in_k_j_i_order(tmp_path, name, version):
    path = organ_nifti(tmp_path / name, shape=(13, 11, 7), version=version, slope=0.25, inter=-3.0)
    source = NiftiSource(path, cache_dir=tmp_path / "cache")
    expected = nib.load(path).get_fdata()  # (i, j, k), scaled
    assert source.shape == (7, 11, 13)
    np.testing.assert_allclose(whole(source)[0], expected.T, rtol=1e-6)
    data, _ = source.read(Box((2, 3, 4), (5, 9, 13)))
    np.testing.assert_allclose(data[0], expected[4:13, 3:9, 2:5].T, rtol=1e-6)


def test_big_endian_files_read_the_same(tmp_path):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = nib.Nifti1Image(data, OBLIQUE, header=nib.Nifti1Header(endianness=">"))
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, tmp_path / "be.nii")
    assert nib.load(tmp_path / "be.nii").header.endianness == ">"
    assert np.array_equal(whole(NiftiSource(tmp_path / "be.nii"))[0], data.T * 2.0 + 1.0)


def test_nan_voxels_are_invalid(tmp_path):
    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    _, valid = NiftiSource(write_nifti(tmp_path / "n.nii", data)).read(Box((0, 0, 0), (6, 5, 4)))
    assert not valid[3, 2, 1] and valid.sum() == valid.size - 1


def test_spacing_is_in_millimetres_along_z_y_x(tmp_path):
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    source = NiftiSource(write_nifti(tmp_path / "a.nii", np.zeros((4, 5, 6), np.int16), affine))
    assert source.spacing == pytest.approx((2.0, 0.6, 0.5))
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.0005, 0.0006, 0.002, 1.0]))
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "m.nii")
    assert NiftiSource(tmp_path / "m.nii").spacing == pytest.approx((2.0, 0.6, 0.5))


def test_4d_volumes_one_at_a_time_or_as_channels(tmp_path, rng):
    data = rng.integers(0, 100, (6, 5, 4, 3)).astype(np.int16)
    for name in ("f.nii", "f.nii.gz"):
        path = write_nifti(tmp_path / name, data)
        with pytest.raises(InputError, match="holds 3 volumes .*: choose one with volume"):
            NiftiSource(path)
        with pytest.raises(InputError, match="volume 3 does not exist"):
            NiftiSource(path, volume=3)
        one = NiftiSource(path, volume=2, cache_dir=tmp_path / "c")
        assert one.channels == 1
        assert np.array_equal(whole(one)[0], data[..., 2].T)
        every = NiftiSource(path, volume="channels", cache_dir=tmp_path / "c")
        assert every.channels == 3
        assert np.array_equal(whole(every), data.transpose(3, 2, 1, 0))


def test_a_2d_file_is_one_slice_thick(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "flat.nii")
    source = NiftiSource(tmp_path / "flat.nii")
    assert source.shape == (1, 4, 3)
    assert np.array_equal(whole(source)[0, 0], data.T)


def test_gz_is_decompressed_once_into_a_chunked_cache(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii.gz", shape=(40, 30, 70))
    cache = tmp_path / "cache"
    first = NiftiSource(path, cache_dir=cache)
    stamp = os.stat(first.cache).st_mtime_ns
    second = NiftiSource(path, cache_dir=cache)
    assert second.cache == first.cache and os.stat(second.cache).st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [os.path.basename(first.cache)]  # no partial left
    import zarr

    array = zarr.open_array(first.cache, mode="r")
    assert array.shape == (1, 70, 30, 40) and array.chunks[1] < 70
    assert array.dtype == np.int16  # raw voxels; scaling is applied on reading


def copies(cache, name="*"):
    return sorted(p.name for p in cache.glob(f"{name}.*.zarr"))


def disk_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def test_a_changed_input_replaces_its_copy_unless_the_copy_is_in_use(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii.gz", shape=(20, 20, 20))
    (tmp_path / "other").mkdir()
    other = organ_nifti(tmp_path / "other" / "ct.nii.gz", shape=(20, 20, 20), seed=1)  # same name, kept
    cache = tmp_path / "cache"
    NiftiSource(other, cache_dir=cache)
    stamp = os.stat(path).st_mtime_ns
    for touch in range(1, 11):
        os.utime(path, ns=(stamp + touch * 10**9,) * 2)
        NiftiSource(path, cache_dir=cache)
    assert len(copies(cache, "ct.nii.gz")) == 2  # the last copy of each input
    held = NiftiSource(path, cache_dir=cache)
    os.utime(path, ns=(stamp + 20 * 10**9,) * 2)
    newest = NiftiSource(path, cache_dir=cache)
    assert os.path.exists(held.cache) and len(copies(cache, "ct.nii.gz")) == 3  # held is still read
    np.testing.assert_array_equal(whole(held), whole(newest))
    del held, newest
    os.utime(path, ns=(stamp + 30 * 10**9,) * 2)
    NiftiSource(path, cache_dir=cache)
    assert len(copies(cache, "ct.nii.gz")) == 2


def test_the_leftovers_of_a_killed_decompression_are_removed(tmp_path, rng):
    big = write_nifti(tmp_path / "big.nii.gz", rng.integers(-1000, 1000, (160, 160, 200)).astype(np.int16))
    cache = tmp_path / "cache"
    code = f"from gigaseg.io.nifti import NiftiSource; NiftiSource({str(big)!r}, cache_dir={str(cache)!r})"
    builder = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while builder.poll() is None and not list(cache.glob(".big.nii.gz.*/data.zarr/zarr.json")):
        assert time.monotonic() < deadline, "the decompression did not start"
        time.sleep(0.005)
    builder.send_signal(signal.SIGKILL)
    assert builder.wait() == -signal.SIGKILL, "the decompression finished before it could be killed"
    assert len(list(cache.glob(".big.nii.gz.*"))) == 1
    live = cache / ".live.nii.gz.0123456789abcdef0123.zarr.x"  # a decompression still running here
    shutil.copytree(next(cache.glob(".big.nii.gz.*")), live)
    (live / "builder").write_text(f"{socket.gethostname()} {os.getpid()}\n")
    NiftiSource(organ_nifti(tmp_path / "small.nii.gz"), cache_dir=cache)
    assert sorted(p.name for p in cache.glob(".*")) == [live.name]
    assert copies(cache) == copies(cache, "small.nii.gz")


def test_the_size_bound_evicts_the_least_recently_used_copies_not_in_use(tmp_path):
    first = organ_nifti(tmp_path / "a.nii.gz", shape=(30, 30, 30))
    for name in "bcde":
        shutil.copy(first, tmp_path / f"{name}.nii.gz")
    cache = tmp_path / "cache"
    held = NiftiSource(first, cache_dir=cache)  # the oldest copy, in use throughout
    size = disk_bytes(held.cache)
    for name in "bcb":  # b is used again: c is the least recently used copy not in use
        NiftiSource(tmp_path / f"{name}.nii.gz", cache_dir=cache)
    NiftiSource(tmp_path / "d.nii.gz", cache_dir=cache, cache_max=int(3.5 * size))
    assert [n.split(".")[0] for n in copies(cache)] == ["a", "b", "d"]
    NiftiSource(tmp_path / "e.nii.gz", cache_dir=cache, cache_max=1)  # never the copy just made, nor one in use
    assert [n.split(".")[0] for n in copies(cache)] == ["a", "e"]
    assert disk_bytes(cache) == 2 * size
    np.testing.assert_array_equal(whole(held)[0], nib.load(first).get_fdata().T)


@pytest.mark.parametrize("damage", ["truncate", "flip", "not-gzip"])
def test_a_corrupt_gzip_gives_one_clear_error(tmp_path, damage):
    path = organ_nifti(tmp_path / "ct.nii.gz", shape=(30, 30, 30))
    raw = path.read_bytes()
    if damage == "truncate":
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "flip":
        raw = raw[:-300] + bytes(b ^ 0x5A for b in raw[-300:-200]) + raw[-200:]
    else:
        raw = b"NOTGZIP" + raw[7:]
    path.write_bytes(raw)
    with pytest.raises(SourceError, match=r"ct.nii.gz.*(corrupt|truncated|NIfTI)"):
        NiftiSource(path, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.zarr"))


def test_missing_and_non_nifti_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        NiftiSource(tmp_path / "none.nii")
    (tmp_path / "text.nii").write_text("hello")
    with pytest.raises(SourceError, match="cannot read .* as NIfTI"):
        NiftiSource(tmp_path / "text.nii")
    gz = tmp_path / "short.nii"
    gz.write_bytes(gzip.compress(b"x" * 10))
    with pytest.raises(SourceError):
        NiftiSource(gz)


def test_a_truncated_nii_is_refused(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii", shape=(20, 20, 20))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SourceError, match="truncated"):
        whole(NiftiSource(path))


def broken(path, *, sform, qform_code, pixdim=None):
    """A file whose header nibabel would not write: patched on disk after saving."""
    write_nifti(path, np.zeros((4, 5, 6), np.int16), qform_code=qform_code)
    with open(path, "rb") as f:
        header = nib.Nifti1Header.from_fileobj(f)
    header["srow_x"], header["srow_y"], header["srow_z"] = sform[:3]
    if pixdim is not None:
        header["pixdim"][1:4] = pixdim
    with open(path, "r+b") as f:
        f.write(header.binaryblock)
    return path


def test_a_zero_or_singular_sform_falls_back_to_the_qform(tmp_path):
    singular = OBLIQUE.copy()
    singular[:, 2] = singular[:, 0] * 2
    for sform in (np.zeros((4, 4)), singular):
        with pytest.warns(GigasegWarning, match="the sform is zero or singular; using the qform"):
            source = NiftiSource(broken(tmp_path / "b.nii", sform=sform, qform_code=1))
        assert source.ref.affine_source == "qform"
        np.testing.assert_allclose(source.ref.matrix, OBLIQUE, atol=1e-5)


def test_without_a_usable_transform_the_voxel_sizes_are_used(tmp_path):
    path = broken(tmp_path / "b.nii", sform=np.zeros((4, 4)), qform_code=0, pixdim=[0.5, 0, 3.0])
    with pytest.warns(GigasegWarning, match=r"sform is zero or singular; using the voxel sizes \[0.5, 1.0, 3.0\]"):
        source = NiftiSource(path)
    assert source.ref.affine_source == "pixdim"
    assert np.array_equal(source.ref.matrix, np.diag([0.5, 1.0, 3.0, 1.0]))
    assert source.spacing == (3.0, 1.0, 0.5)


def test_a_usable_sform_is_used_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = NiftiSource(write_nifti(tmp_path / "ok.nii", np.zeros((3, 3, 3), np.int16)))
    assert source.ref.affine_source == "sform"
    assert source.ref.orientation == "".join(nib.aff2axcodes(OBLIQUE))


@pytest.mark.parametrize(
    "affine",
    [
        OBLIQUE,
        np.diag([1.0, 1.0, 1.0, 1.0]),
        np.array([[0, 0, -2, 0], [0, -1, 0, 0], [1.5, 0, 0, 0], [0, 0, 0, 1]]),
    ],
)
def test_canonical_view_matches_nibabel_as_closest_canonical(tmp_path, rng, affine):
    data = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
    path = write_nifti(tmp_path / "o.nii", data, affine)
    source = NiftiSource(path)
    scene = whole(source)[None]  # (1, 1, k, j, i)
    expected = np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)
    assert np.array_equal(source.axis_view(canonical=True).to_model(scene)[0, 0], expected)
    assert np.array_equal(source.axis_view().to_model(scene)[0, 0], data)


def test_the_header_survives_attrs_exactly(tmp_path):
    path = organ_nifti(tmp_path / "ct.nii.gz", version=2, sform_code=4, qform_code=2)
    ref = NiftiSource(path, cache_dir=tmp_path / "c").ref
    import json

    attrs = json.loads(json.dumps(ref.to_attrs()))
    assert NiftiRef.from_attrs(attrs) == ref
    assert attrs["sform_code"] == 4 and attrs["qform_code"] == 2 and attrs["version"] == 2
    assert attrs["dim"][:4] == [3, 20, 26, 23]
    assert attrs["xyzt_units"] == ["mm", "sec"]
