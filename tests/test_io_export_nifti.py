"""Exported NIfTI masks overlay their images exactly, in nibabel and in SimpleITK."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.openers import Opener

from gigaseg.errors import InputError
from gigaseg.io.export import export_mask
from gigaseg.io.georef import Georef
from gigaseg.io.nifti import NiftiSource
from gigaseg.io.store import StoreLayout, create_store
from gigaseg.tiler import Box
from tests.conftest import OBLIQUE, oblique_affine, write_nifti

LPS = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
CASES = {
    "oblique sform+qform .nii.gz": dict(name="a.nii.gz"),
    "LPS qform only .nii": dict(name="b.nii", affine=LPS, sform_code=0),
    "NIfTI-2 sform only": dict(name="c.nii.gz", version=2, sform_code=4, qform_code=0),
    "sform and qform differ": dict(name="d.nii", qform=oblique_affine((0.1, 0.2, -0.3), (1, 1, 2))),
    "4-D": dict(name="e.nii.gz", volumes=3),
    "scaled int16": dict(name="f.nii", slope=2.0, inter=-1024.0),
}


def make_image(tmp_path, *, name, affine=OBLIQUE, volumes=0, qform=None, **kw):
    shape = (11, 9, 7, volumes) if volumes else (11, 9, 7)
    data = np.random.default_rng(0).integers(-1000, 1000, shape).astype(np.int16)
    path = write_nifti(tmp_path / name, data, affine, **kw)
    if qform is not None:  # nibabel writes what it is given; patch the qform after the fact
        image = nib.load(path)
        image.set_qform(qform, code=2)
        nib.save(image, path)
    return path


def disk_header(path):
    """The header as written (nibabel's loaded header has its scaling moved to the proxy)."""
    with Opener(str(path)) as f:
        return nib.load(path).header_class.from_fileobj(f)


def mask_store(tmp_path, source, labels):
    layout = StoreLayout(
        shape=source.shape, chunks=(3, 8, 8), block_counts=(1, 1, 1), classes=list("abcd"), georef=source.ref
    )
    store = create_store(tmp_path / "m.zarr", layout)
    store.write(Box((0, 0, 0), source.shape), labels)
    store.mark_done((0, 0, 0))
    store.finish()
    return tmp_path / "m.zarr"


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_mask_overlays_its_image_in_nibabel_and_simpleitk(tmp_path, case):
    image_path = make_image(tmp_path, **CASES[case])
    source = NiftiSource(image_path, volume=0, cache_dir=tmp_path / "cache")
    labels = np.random.default_rng(1).integers(0, 4, source.shape).astype(np.uint8)
    out = tmp_path / ("mask.nii.gz" if case.endswith("gz") else "mask.nii")
    export_mask(mask_store(tmp_path, source, labels), out)

    image, mask = nib.load(image_path), nib.load(out)
    ih, mh = disk_header(image_path), disk_header(out)
    assert np.array_equal(mask.affine, image.affine)
    for field in ("sform_code", "qform_code", "pixdim", "xyzt_units", "srow_x", "srow_y", "srow_z"):
        assert np.array_equal(mh[field], ih[field]), field
    for field in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        assert mh[field] == ih[field], field
    assert mask.shape == image.shape[:3]
    assert mh.get_data_dtype() == np.uint8
    assert (float(mh["scl_slope"]), float(mh["scl_inter"])) == (1.0, 0.0)
    assert isinstance(mh, type(ih))
    assert np.array_equal(np.asanyarray(mask.dataobj), labels.T)

    assert_itk_overlays(image_path, out, labels)


def assert_itk_overlays(image_path, mask_path, labels):
    """ITK sees the same origin, spacing and direction for the mask as for the image."""
    try:
        itk_image = sitk.ReadImage(str(image_path))
    except RuntimeError:
        # SimpleITK 2.5 (ITK 5.4) reads no NIfTI-2 at all; then it must not read the mask either
        assert disk_header(image_path)["sizeof_hdr"] == 540
        with pytest.raises(RuntimeError):
            sitk.ReadImage(str(mask_path))
        return
    itk_mask = sitk.ReadImage(str(mask_path))
    assert itk_mask.GetOrigin() == itk_image.GetOrigin()[:3]
    assert itk_mask.GetSpacing() == itk_image.GetSpacing()[:3]
    direction = np.array(itk_image.GetDirection()).reshape(itk_image.GetDimension(), -1)[:3, :3]
    assert np.array_equal(np.array(itk_mask.GetDirection()).reshape(3, 3), direction)
    assert np.array_equal(sitk.GetArrayFromImage(itk_mask), labels)  # ITK arrays are (k, j, i) too


def test_raster_stores_do_not_export_to_nifti_and_volumes_not_to_tiff(tmp_path):
    layout = StoreLayout(shape=(8, 8), chunks=(8, 8), block_counts=(1, 1), classes=["a"], georef=Georef(None))
    store = create_store(tmp_path / "r.zarr", layout)
    store.mark_done((0, 0))
    store.finish()
    with pytest.raises(InputError, match="did not come from a NIfTI volume"):
        export_mask(tmp_path / "r.zarr", tmp_path / "r.nii.gz")
    source = NiftiSource(make_image(tmp_path, name="v.nii"))
    volume = mask_store(tmp_path, source, np.zeros(source.shape, np.uint8))
    with pytest.raises(InputError, match="export 3-D masks to .nii.gz"):
        export_mask(volume, tmp_path / "v.tif")
    with pytest.raises(InputError, match=r"must end in .tif, .nii or .nii.gz"):
        export_mask(volume, tmp_path / "v.png")
    assert not list(tmp_path.glob(".*partial"))
