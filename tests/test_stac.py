"""STAC inputs: an item's single-band assets stacked on the fly (a VRT) segment like one 4-band GeoTIFF.

The four band assets (256-pixel tiles, uint16, nodata 0) lie on disk, behind the
HTTP range server and on moto's S3 server; each item is segmented and its mask
compared bit for bit with the mask of a local 4-band GeoTIFF of the same pixels.
"""

from __future__ import annotations

import datetime
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from gigaseg.errors import GigasegWarning, InputError
from gigaseg.io import stac
from gigaseg.io.sources import open_source
from gigaseg.jobs.jobfile import load_job
from gigaseg.models.checkpoint import init_checkpoint
from gigaseg.tiler import Box
from tests.conftest import UTM, one_error, run, write_tiff

pystac = pytest.importorskip("pystac")

KEYS = ["B02", "B03", "B04", "B08"]
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
ARGS = ["--block", "256", "--chunk", "128"]


def make_item(item_id: str, hrefs: dict[str, str]) -> pystac.Item:
    """A Sentinel-2-like item: one single-band COG asset per band, named in eo:bands."""
    item = pystac.Item(
        item_id,
        geometry=None,
        bbox=None,
        datetime=datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC),
        properties={},
    )
    for key, href in hrefs.items():
        bands = [{"name": key, "common_name": COMMON[key]}]
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, extra_fields={"eo:bands": bands}))
    item.add_asset("thumbnail", pystac.Asset("thumb.png", media_type=pystac.MediaType.PNG, roles=["thumbnail"]))
    return item


def write_json(path: Path, obj) -> Path:
    if isinstance(obj, pystac.Item):
        obj = obj.to_dict(include_self_link=False, transform_hrefs=False)
    elif isinstance(obj, pystac.ItemCollection):
        obj = obj.to_dict(transform_hrefs=False)
    path.write_text(json.dumps(obj))
    return path


def mask_and_attrs(store):
    group = zarr.open_group(str(store), mode="r")
    return group["mask"][...], dict(group.attrs["gigaseg"])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Four band files, the 4-band GeoTIFF of the same pixels, a 4-band model naming its bands, the reference mask."""
    d = tmp_path_factory.mktemp("stac")
    rng = np.random.default_rng(17)
    data = rng.integers(1, 3000, (4, 300, 400)).astype(np.uint16)
    data[:, :40, :60] = 0  # nodata in every band
    assets = d / "assets"
    assets.mkdir()
    for key, band in zip(KEYS, data, strict=True):
        write_tiff(assets / f"{key}.tif", band[None], nodata=0)
    stacked = write_tiff(d / "stacked.tif", data, nodata=0)
    model = d / "m.pt"
    init_checkpoint(
        model,
        arch="conv",
        in_channels=4,
        classes=["water", "field", "forest"],
        tile=64,
        overlap=16,
        mean=[1500.0] * 4,
        std=[800.0] * 4,
        band_names=["blue", "green", "red", "nir"],
        arch_kwargs={"kernel_size": 3},
        seed=4,
    )
    result = run("segment", stacked, "--model", model, "--out", d / "reference.zarr", *ARGS)
    assert result.exit_code == 0, result.output
    reference, _ = mask_and_attrs(d / "reference.zarr")
    assert 0 < (reference == 255).sum() < reference.size  # some nodata, not all
    return assets, model, reference


def s3fs_():
    import s3fs

    return s3fs.S3FileSystem()


@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_a_stac_item_with_four_band_assets_segments_like_the_stacked_geotiff(where, scene, tmp_path, request):
    """Local files (relative hrefs), http (--assets, item read over http) and s3 (item read from s3)."""
    assets, model, reference = scene
    extra: list[str] = []
    if where == "local":
        hrefs = {key: f"../assets/{key}.tif" for key in KEYS}  # relative to the item's file
        (tmp_path / "items").mkdir()
        item_path = str(write_json(tmp_path / "items" / "item.json", make_item("S2A_local", hrefs)))
        (tmp_path / "assets").symlink_to(assets)
        expected = {key: str(tmp_path / "assets" / f"{key}.tif") for key in KEYS}
    elif where == "http":
        server = request.getfixturevalue("range_server")
        for key in KEYS:
            (server.root / f"{key}.tif").write_bytes((assets / f"{key}.tif").read_bytes())
        expected = {key: f"{server.url}/{key}.tif" for key in KEYS}
        write_json(server.root / "item.json", make_item("S2A_http", expected))
        item_path = f"{server.url}/item.json"
        extra = ["--assets", ",".join(KEYS)]
    else:
        bucket = request.getfixturevalue("s3")
        fs = s3fs_()
        for key in KEYS:
            fs.put(str(assets / f"{key}.tif"), f"{bucket}/tiles/{key}.tif")
        expected = {key: f"{bucket}/tiles/{key}.tif" for key in KEYS}
        write_json(tmp_path / "item.json", make_item("S2A_s3", {key: f"{key}.tif" for key in KEYS}))
        fs.put(str(tmp_path / "item.json"), f"{bucket}/tiles/item.json")  # relative hrefs, resolved on s3
        item_path = f"{bucket}/tiles/item.json"
    out = tmp_path / "out.zarr"
    result = run("segment", item_path, "--model", model, "--out", out, *ARGS, *extra)
    assert result.exit_code == 0, result.output
    mask, attrs = mask_and_attrs(out)
    assert np.array_equal(mask, reference)
    assert attrs["stac_item"] == f"S2A_{where}"
    assert attrs["assets"] == expected
    assert attrs["complete"] is True


def test_assets_are_matched_to_the_model_cards_band_names(scene, tmp_path):
    """Assets keyed by common name (Earth Search style), listed in another order: the card decides the order."""
    assets, _, _ = scene
    item = make_item("S2B_named", {key: str(assets / f"{key}.tif") for key in reversed(KEYS)})
    item.assets = {COMMON[key]: asset for key, asset in item.assets.items() if key in COMMON} | {
        "thumbnail": item.assets["thumbnail"]
    }
    path = write_json(tmp_path / "item.json", item)
    source = open_source(path, band_names=["blue", "green", "red", "nir"])
    assert source.band_names == ["blue", "green", "red", "nir"]
    by_key = open_source(path, band_names=["B02", "B03", "B04", "B08"])  # eo:bands names match too
    assert by_key.band_names == ["blue", "green", "red", "nir"]
    explicit = open_source(path, assets=["nir", "red", "green"], band_names=["blue", "green", "red", "nir"])
    assert explicit.band_names == ["nir", "red", "green"]  # an explicit list wins
    data, _ = source.read(Box((100, 100), (110, 120)))
    with rasterio.open(assets / "B08.tif") as ds:
        nir = ds.read(1, window=((100, 110), (100, 120)))
    assert np.array_equal(data[3], nir.astype(np.float32))


def test_the_source_pickles_with_its_vrt_and_reads_the_same(scene, tmp_path):
    assets, _, _ = scene
    path = write_json(tmp_path / "item.json", make_item("S2A_p", {key: str(assets / f"{key}.tif") for key in KEYS}))
    source = open_source(path, assets=KEYS)
    assert source.vrt.startswith("<VRTDataset")  # XML text: no file to ship to workers
    assert source.path == str(path) and source.shape == (300, 400) and source.channels == 4
    copy = pickle.loads(pickle.dumps(source))
    box = Box((0, 0), (300, 400))
    assert all(np.array_equal(a, b) for a, b in zip(source.read(box), copy.read(box), strict=True))
    assert copy.describe()["stac_item"] == "S2A_p"


def test_a_job_file_over_an_item_collection_writes_one_store_per_item(scene, tmp_path):
    assets, model, reference = scene
    hrefs = {key: str(assets / f"{key}.tif") for key in KEYS}
    items = pystac.ItemCollection([make_item("S2A_one", hrefs), make_item("S2A_two", hrefs)])
    write_json(tmp_path / "items.json", items)
    (tmp_path / "job.yaml").write_text(
        f"inputs: {{stac: items.json, assets: [{', '.join(KEYS)}]}}\n"
        f"model: {model}\n"
        "output: {dir: out, name: '{stem}.zarr'}\n"
        "tiling: {block: 256, chunk: 128}\n"
    )
    job = load_job(tmp_path / "job.yaml")
    specs = job.scenes(base=tmp_path)
    assert [s.input for s in specs] == [f"{tmp_path}/items.json#S2A_one", f"{tmp_path}/items.json#S2A_two"]
    assert all(s.options.assets == tuple(KEYS) for s in specs)
    result = run("run", tmp_path / "job.yaml", "--workers", "1")
    assert result.exit_code == 0, result.output
    for item_id in ("S2A_one", "S2A_two"):
        mask, attrs = mask_and_attrs(tmp_path / "out" / f"{item_id}.zarr")
        assert np.array_equal(mask, reference)
        assert attrs["stac_item"] == item_id and attrs["assets"] == hrefs


def test_a_job_file_names_an_unreadable_stac_file_as_a_missing_input(tmp_path):
    (tmp_path / "job.yaml").write_text("inputs: {stac: nothing.json}\nmodel: m.pt\n")
    job = load_job(tmp_path / "job.yaml")
    assert job.scenes(base=tmp_path) == []
    [missing] = job.missing_inputs(tmp_path)
    assert "nothing.json does not exist" in missing.error
    (tmp_path / "job.yaml").write_text("inputs: {stac: a.json, assets: [B02]}\nassets: [B03]\nmodel: m.pt\n")
    with pytest.raises(InputError, match="assets is given twice"):
        load_job(tmp_path / "job.yaml")


def test_an_item_missing_an_asset_is_one_clear_line(scene, tmp_path):
    assets, model, _ = scene
    hrefs = {key: str(assets / f"{key}.tif") for key in KEYS[:3]}  # no B08
    path = write_json(tmp_path / "item.json", make_item("S2A_short", hrefs))
    out = tmp_path / "out.zarr"
    line = one_error(run("segment", path, "--model", model, "--out", out, "--assets", "B02,B03,B04,B08"))
    assert (
        line == "gigaseg: error: STAC item S2A_short has no asset B08 named in --assets; its rasters are B02, B03, B04"
    )
    line = one_error(run("segment", path, "--model", model, "--out", out))  # matched by the card's band names
    assert line == (
        "gigaseg: error: the model's bands nir match no asset of STAC item S2A_short "
        "(its rasters are B02, B03, B04); choose them with --assets"
    )
    line = one_error(run("segment", path, "--model", model, "--out", out, "--assets", "B02,B03"))
    assert line.endswith("the model takes 4 channels but 2 are selected from " + f"{path}; choose 4 with --assets")
    assert not out.exists()


def test_segment_refuses_a_collection_of_several_items_and_takes_one_by_id(scene, tmp_path):
    assets, model, reference = scene
    hrefs = {key: str(assets / f"{key}.tif") for key in KEYS}
    write_json(tmp_path / "items.json", pystac.ItemCollection([make_item("a", hrefs), make_item("b", hrefs)]))
    out = tmp_path / "out.zarr"
    one_error(run("segment", tmp_path / "items.json", "--model", model, "--out", out), "holds 2 STAC items", "job file")
    result = run("segment", f"{tmp_path}/items.json#b", "--model", model, "--out", out, *ARGS)
    assert result.exit_code == 0, result.output
    mask, attrs = mask_and_attrs(out)
    assert np.array_equal(mask, reference) and attrs["stac_item"] == "b"
    one_error(run("segment", f"{tmp_path}/items.json#c", "--model", model, "--out", out), "no STAC item 'c'", "a, b")


def test_a_static_catalog_is_walked_for_its_items(scene, tmp_path):
    assets, _, _ = scene
    catalog = pystac.Catalog("tiles", "two tiles")
    sub = pystac.Catalog("june", "June")
    catalog.add_child(sub)
    catalog.add_item(make_item("t1", {key: str(assets / f"{key}.tif") for key in KEYS}))
    sub.add_item(make_item("t2", {key: str(assets / f"{key}.tif") for key in KEYS}))
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    path = tmp_path / "catalog" / "catalog.json"
    assert stac.is_stac(path)
    assert sorted(i.id for i in stac.read_items(path)) == ["t1", "t2"]
    assert sorted(stem for _, stem in stac.stac_scene_inputs(path)) == ["t1", "t2"]
    source = open_source(f"{path}#t2", assets=KEYS)
    assert source.describe()["assets"] == {key: str(assets / f"{key}.tif") for key in KEYS}


def test_coarser_assets_are_resampled_to_the_finest_grid_with_a_warning(tmp_path):
    fine = np.arange(1, 64 * 64 + 1, dtype=np.uint16).reshape(1, 64, 64)
    coarse = np.arange(1, 32 * 32 + 1, dtype=np.uint16).reshape(1, 32, 32)
    from rasterio.transform import from_origin

    write_tiff(tmp_path / "B02.tif", fine)
    write_tiff(tmp_path / "B11.tif", coarse, transform=from_origin(500000.0, 6000000.0, 20.0, 20.0))
    item = make_item("S2A_20m", {"B02": str(tmp_path / "B02.tif")})
    item.add_asset("B11", pystac.Asset(str(tmp_path / "B11.tif"), media_type=pystac.MediaType.COG))
    with pytest.warns(GigasegWarning, match=r"B11 \(20 m\) are resampled \(nearest neighbour\) to the 10 m grid"):
        xml = stac.item_vrt(item, ["B02", "B11"])
    with rasterio.open(xml) as ds:
        assert (ds.width, ds.height, ds.crs.to_string()) == (64, 64, UTM)
        assert np.array_equal(ds.read(1), fine[0])
        assert np.array_equal(ds.read(2), coarse[0].repeat(2, 0).repeat(2, 1))
    write_tiff(tmp_path / "B12.tif", coarse, transform=from_origin(500640.0, 6000000.0, 20.0, 20.0))
    item.add_asset("B12", pystac.Asset(str(tmp_path / "B12.tif"), media_type=pystac.MediaType.COG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GigasegWarning)
        with pytest.raises(InputError, match="B02 and B12 of STAC item S2A_20m cover different areas"):
            stac.item_vrt(item, ["B02", "B12"])


def test_what_is_stac_and_the_identity_of_an_item(scene, tmp_path):
    assets, _, _ = scene
    assert not stac.is_stac(assets / "B02.tif")
    (tmp_path / "other.json").write_text(json.dumps({"type": "Topology"}))
    assert not stac.is_stac(tmp_path / "other.json")
    assert stac.is_stac(tmp_path / "absent.json")  # read as STAC, so its error is the STAC reader's
    hrefs = {key: str(assets / f"{key}.tif") for key in KEYS}
    write_json(tmp_path / "items.json", pystac.ItemCollection([make_item("a", hrefs)]))
    first = stac.stac_identity(f"{tmp_path}/items.json#a", ["B02", "nir"])
    assert first["stac_item"] == "a" and first["assets"] == {"B02": hrefs["B02"], "B08": hrefs["B08"]}
    write_json(tmp_path / "items.json", pystac.ItemCollection([make_item("a", hrefs), make_item("b", hrefs)]))
    assert stac.stac_identity(f"{tmp_path}/items.json#a", ["B02", "nir"]) == first  # another item: the same
    moved = {**hrefs, "B02": "s3://elsewhere/B02.tif"}
    write_json(tmp_path / "items.json", pystac.ItemCollection([make_item("a", moved)]))
    assert stac.stac_identity(f"{tmp_path}/items.json#a", ["B02"])["sha256"] != first["sha256"]


def test_assets_given_for_a_plain_raster_are_refused(scene):
    assets, _, _ = scene
    with pytest.raises(InputError, match="assets names the bands of a STAC item"):
        open_source(assets / "B02.tif", assets=["B02"])
