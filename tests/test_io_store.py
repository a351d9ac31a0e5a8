import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from gigaseg.errors import IncompleteStoreError, OutputError, OutputExistsError
from gigaseg.io.georef import Georef
from gigaseg.io.store import StoreLayout, create_store, open_store, pixel_centres
from gigaseg.tiler import Box

CUSTOM = (
    'PROJCS["custom LAEA",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
    '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Azimuthal_Equal_Area"],PARAMETER["latitude_of_center",52.5],'
    'PARAMETER["longitude_of_center",13.25],PARAMETER["false_easting",1000],'
    'PARAMETER["false_northing",2000],UNIT["metre",1]]'
)
CASES = {
    "utm": (CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)),
    "latlon": (
        CRS.from_epsg(4326).to_wkt(),
        (0.000269494585236, 0.0, 13.123456789, 0.0, -0.000269494585236, 52.987654321),
    ),
    "custom": (CRS.from_wkt(CUSTOM).to_wkt(), (2.5, 0.0, -12345.6789, 0.0, -2.5, 98765.4321)),
}


def make_store(path, georef, shape=(300, 500), **kw):
    layout = StoreLayout(shape=shape, chunks=(128, 128), block_counts=(1, 1), classes=["a", "b"], georef=georef, **kw)
    store = create_store(path, layout)
    store.write(Box((0, 0), shape), (np.arange(np.prod(shape)) % 2).reshape(shape).astype(np.uint8))
    store.mark_done((0, 0))
    store.finish()
    return store


@pytest.mark.parametrize("case", sorted(CASES))
def test_gdal_reads_the_crs_transform_and_size(tmp_path, case):
    """GDAL 3.10 guesses the transform from the x/y arrays: exact for projected grids with
    round numbers, and within 1e-9 of a pixel where binary floats cannot do better."""
    wkt, transform = CASES[case]
    make_store(tmp_path / "m.zarr", Georef(wkt, transform))
    with rasterio.open(f'ZARR:"{tmp_path / "m.zarr"}":/mask') as ds:
        assert ds.crs == CRS.from_wkt(wkt)
        got = tuple(ds.transform)[:6]
        if case != "latlon":
            assert got == transform
        np.testing.assert_allclose(got, transform, rtol=0, atol=abs(transform[0]) * 1e-9)
        assert ds.shape == (300, 500)
        assert ds.nodata == 255


@pytest.mark.parametrize("case", sorted(CASES))
def test_xarray_and_rioxarray_read_the_same_georeferencing(tmp_path, case):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    wkt, transform = CASES[case]
    make_store(tmp_path / "m.zarr", Georef(wkt, transform))
    ds = xr.open_zarr(tmp_path / "m.zarr", decode_coords="all")
    mask = ds["mask"]
    assert mask.rio.crs == CRS.from_wkt(wkt)
    assert tuple(mask.rio.transform())[:6] == transform
    assert mask.shape == (300, 500)


def test_pixel_centres_let_gdal_recover_origin_and_step_exactly():
    for origin, step, n in [
        (500000.0, 10.0, 500),
        (6000000.0, -10.0, 300),
        (0.0, 1.0, 2),
        (-12345.6789, 2.5, 500),
    ]:
        x = pixel_centres(origin, step, n)
        guessed = (x[-1] - x[0]) / (n - 1)
        assert guessed == step
        assert x[0] - guessed / 2 == origin
        np.testing.assert_allclose(x, origin + (np.arange(n) + 0.5) * step)


def test_rotated_transform_is_kept_in_attributes(tmp_path):
    rotated = Affine.translation(1000, 2000) * Affine.rotation(15) * Affine.scale(10, -10)
    store = make_store(tmp_path / "r.zarr", Georef(None, tuple(rotated)[:6]))
    assert store.georef.transform == tuple(rotated)[:6]


def test_store_is_complete_only_after_every_block(tmp_path):
    layout = StoreLayout(shape=(20, 20), chunks=(10, 10), block_counts=(2, 2), classes=["a"], georef=Georef(None))
    store = create_store(tmp_path / "s.zarr", layout)
    store.mark_done((0, 0))
    with pytest.raises(IncompleteStoreError):
        store.finish()
    with pytest.raises(IncompleteStoreError, match=r"incomplete \(1 of 4 blocks"):
        open_store(tmp_path / "s.zarr", require_complete=True)
    for index in [(0, 1), (1, 0), (1, 1)]:
        store.mark_done(index)
    store.finish()
    assert open_store(tmp_path / "s.zarr", require_complete=True).complete


def test_existing_or_unwritable_outputs_are_refused(tmp_path):
    layout = StoreLayout(shape=(4, 4), chunks=(4, 4), block_counts=(1, 1), classes=["a"], georef=Georef(None))
    create_store(tmp_path / "s.zarr", layout)
    with pytest.raises(OutputExistsError, match="pass overwrite"):
        create_store(tmp_path / "s.zarr", layout)
    create_store(tmp_path / "s.zarr", layout, overwrite=True)
    (tmp_path / "plain").mkdir()
    with pytest.raises(OutputError, match="not a gigaseg Zarr store"):
        create_store(tmp_path / "plain", layout, overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        create_store(tmp_path / "no" / "s.zarr", layout)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_cut_short_while_made_is_made_again_without_a_flag(tmp_path, zarr_format):
    """Its group's documents go last: a run killed before them leaves no store, and what it
    leaves (array documents, coordinates) is replaced by the rerun. One that got a block's
    data but lost its group document is no such leftover: it stays refused."""
    import gigaseg.io.store as store_module

    layout = StoreLayout(
        shape=(4, 4), chunks=(4, 4), block_counts=(1, 1), classes=["a"], georef=Georef(None, (1, 0, 0, 0, -1, 4))
    )
    layout = StoreLayout(**{**layout.__dict__, "zarr_format": zarr_format})
    out = tmp_path / "s.zarr"
    write = store_module.write_files

    def killed_before_the_group(path, files):
        if ".zgroup" in files or "zarr.json" in files:
            raise KeyboardInterrupt  # SIGINT between the two batches
        write(path, files)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "write_files", killed_before_the_group)
        with pytest.raises(KeyboardInterrupt):
            create_store(out, layout)
    assert out.exists() and not store_module.is_store(out) and store_module.cut_short(out)
    store = create_store(out, layout)  # no overwrite needed
    store.write(Box((0, 0), (4, 4)), np.zeros((4, 4), np.uint8))
    store.mark_done((0, 0))
    for name in (".zgroup", ".zattrs", "zarr.json"):
        (out / name).unlink(missing_ok=True)
    assert not store_module.cut_short(out)  # a block's data is there: not ours to remove
    with pytest.raises(OutputExistsError, match="exists; pass overwrite"):
        create_store(out, layout)


def test_only_the_exact_leftover_of_a_cut_short_store_is_replaced_unasked(tmp_path, monkeypatch):
    """A directory with anything a store's making does not leave (a link, a FIFO, a file of
    another name, a block's chunk) is the user's: refused, not deleted. Nor is the current
    directory (or one above it) ever an output."""
    import os

    from gigaseg.io.store import cut_short

    layout = StoreLayout(shape=(4, 4), chunks=(4, 4), block_counts=(1, 1), classes=["a"], georef=Georef(None))
    for extra in ("link", "fifo", "notes/.zattrs", "blocks_done/0.0", "mask/0.0", ""):
        out = tmp_path / f"case-{extra.replace('/', '-') or 'empty-dirs'}"
        (out / "mask").mkdir(parents=True)
        (out / "x").mkdir()
        if extra == "link":
            (out / "data").symlink_to(tmp_path)
        elif extra == "fifo":
            os.mkfifo(out / "pipe")
        elif extra:
            (out / extra).parent.mkdir(parents=True, exist_ok=True)
            (out / extra).write_text("{}")
        if extra:
            assert not cut_short(out), extra
            with pytest.raises(OutputExistsError):
                create_store(out, layout)
        else:  # only the arrays' directories, made before their documents: cut short
            assert cut_short(out)
            create_store(out, layout)
    monkeypatch.chdir(tmp_path / "case-empty-dirs")
    for here in (".", "./", ".."):
        with pytest.raises(OutputError, match="is the current directory or one above it"):
            create_store(here, layout, overwrite=True)
    assert (tmp_path / "case-empty-dirs" / ".zgroup").exists()


def test_a_store_without_its_block_records_is_one_clear_error(tmp_path):
    import shutil

    from gigaseg.errors import DamagedStoreError

    layout = StoreLayout(shape=(4, 4), chunks=(4, 4), block_counts=(1, 1), classes=["a"], georef=Georef(None))
    create_store(tmp_path / "s.zarr", layout)
    shutil.rmtree(tmp_path / "s.zarr" / "blocks_done")
    with pytest.raises(DamagedStoreError, match=r"s.zarr: its blocks_done array is missing; segment it again"):
        open_store(tmp_path / "s.zarr", mode="r+")


def test_probabilities_are_stored_quantised(tmp_path):
    layout = StoreLayout(
        shape=(4, 4),
        chunks=(4, 4),
        block_counts=(1, 1),
        classes=["a", "b"],
        georef=Georef(None),
        probabilities="uint8",
    )
    store = create_store(tmp_path / "p.zarr", layout)
    probs = np.stack([np.full((4, 4), 0.25), np.full((4, 4), 0.75)]).astype(np.float32)
    store.write(Box((0, 0), (4, 4)), np.ones((4, 4), np.uint8), probs)
    assert (store.probabilities[:] == np.array([64, 191])[:, None, None]).all()
