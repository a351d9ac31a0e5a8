"""Vector labels: reading, choosing the class attribute, reprojecting, rasterising window by window."""

import json
import warnings

import numpy as np
import pyogrio.raw
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.warp import transform as warp_points

from gigaseg.errors import InputError, SourceError
from gigaseg.io.georef import Georef
from gigaseg.io.vectors import VectorLabels, is_vector_path
from gigaseg.tiler import Box
from tests.conftest import UTM, UTM_TRANSFORM

UTM_GRID = Georef(UTM, tuple(UTM_TRANSFORM)[:6])  # 10 m pixels from (500000, 6000000)


def write_vectors(path, geometries, fields, *, crs=UTM, driver=None):
    """Write shapely geometries and ``{name: values}`` attributes with pyogrio (GPKG, Shapefile, GeoJSON)."""
    names = list(fields)
    kind = shapely.get_type_id(geometries[0])
    pyogrio.raw.write(
        path,
        shapely.to_wkb(np.asarray(geometries, object)),
        [np.asarray(fields[n]) for n in names],
        names,
        geometry_type={0: "Point", 3: "Polygon"}.get(kind, "Unknown"),
        crs=crs,
        driver=driver,
    )
    return path


def centre(row, col, transform=UTM_TRANSFORM):
    return transform @ (col + 0.5, row + 0.5)


def whole(labels, shape, georef=UTM_GRID):
    return labels.rasterize(Box((0, 0), shape), georef)


def test_points_burn_the_pixel_they_fall_in(tmp_path):
    pixels = [(3, 4), (10, 0), (19, 29)]
    # anywhere inside the pixel, not only its centre
    points = [shapely.Point(*(UTM_TRANSFORM @ (c + 0.9, r + 0.2))) for r, c in pixels]
    path = write_vectors(tmp_path / "p.gpkg", points, {"class": np.array([2, 0, 1], np.int32)})
    labels = VectorLabels(path)
    out = whole(labels, (20, 30))
    assert out.dtype == np.uint8
    expected = np.full((20, 30), 255, np.uint8)
    for (r, c), v in zip(pixels, [2, 0, 1], strict=True):
        expected[r, c] = v
    np.testing.assert_array_equal(out, expected)
    assert len(labels) == 3 and labels.attribute == "class"


def test_polygons_burn_the_pixels_whose_centre_is_inside(tmp_path):
    # a triangle: pixel centres inside it, computed with shapely, are the ones burnt
    triangle = shapely.Polygon([centre(1.3, 2.1), centre(17.6, 4.4), centre(8.2, 26.7)])
    path = write_vectors(tmp_path / "t.geojson", [triangle], {"label": ["water"]}, driver="GeoJSON")
    out = whole(VectorLabels(path, classes=["land", "water"]), (20, 30))
    rows, cols = np.mgrid[0:20, 0:30]
    xs, ys = UTM_TRANSFORM @ (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(triangle, xs, ys)
    np.testing.assert_array_equal(out, np.where(inside, 1, 255))


@pytest.fixture(scope="module")
def scattered(tmp_path_factory):
    """Random polygons and points over a 90 x 120 grid, classes 0..3."""
    rng = np.random.default_rng(8)
    shapes = []
    for _ in range(25):
        r, c = rng.uniform(0, 90), rng.uniform(0, 120)
        ring = [centre(r + dr, c + dc) for dr, dc in rng.uniform(-12, 12, (5, 2))]
        shapes.append(shapely.convex_hull(shapely.MultiPoint(ring)))
    polygons = write_vectors(
        tmp_path_factory.mktemp("v") / "polygons.gpkg", shapes, {"class": rng.integers(0, 4, len(shapes))}
    )
    points = [shapely.Point(*centre(*xy)) for xy in rng.uniform(0, [90, 120], (200, 2))]
    dots = write_vectors(tmp_path_factory.mktemp("v") / "points.gpkg", points, {"class": rng.integers(0, 4, 200)})
    return VectorLabels(polygons), VectorLabels(dots)


@settings(max_examples=40, deadline=None)
@given(
    row=st.integers(0, 89),
    col=st.integers(0, 119),
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    which=st.sampled_from([0, 1]),
)
def test_a_window_gives_the_pixels_of_the_whole_grid(scattered, row, col, height, width, which):
    labels = scattered[which]
    full = whole(labels, (90, 120))
    stop = (min(row + height, 90), min(col + width, 120))
    np.testing.assert_array_equal(labels.rasterize(Box((row, col), stop), UTM_GRID), full[row : stop[0], col : stop[1]])


def test_tiles_cover_the_scene_exactly(scattered):
    labels = scattered[0]
    full = whole(labels, (90, 120))
    assert (full != 255).sum() > 500 and len(np.unique(full)) == 5  # the fixture burns something
    tiled = np.block(
        [[labels.rasterize(Box((r, c), (r + 30, c + 40)), UTM_GRID) for c in (0, 40, 80)] for r in (0, 30, 60)]
    )
    np.testing.assert_array_equal(tiled, full)


def test_a_window_far_from_every_feature_is_nodata(scattered):
    out = scattered[0].rasterize(Box((5000, 5000), (5010, 5020)), UTM_GRID)
    assert out.shape == (10, 20) and (out == 255).all()


def test_labels_in_wgs84_are_reprojected_onto_a_utm_image(tmp_path):
    pixels = [(2, 3), (15, 25), (7, 11)]
    xs, ys = zip(*(centre(r, c) for r, c in pixels), strict=True)
    lons, lats = warp_points(UTM, "EPSG:4326", xs, ys)
    # a UTM square over pixels rows 10..13, cols 2..6, corners on pixel corners, sent to lon/lat:
    # no densification needed, its edges are short and half a pixel from the centres burnt
    square = [UTM_TRANSFORM @ (c, r) for r, c in [(10, 2), (10, 7), (14, 7), (14, 2)]]
    slon, slat = warp_points(UTM, "EPSG:4326", *zip(*square, strict=True))
    features = [
        {"type": "Feature", "properties": {"class": k}, "geometry": {"type": "Point", "coordinates": [x, y]}}
        for k, x, y in zip([1, 2, 3], lons, lats, strict=True)
    ]
    ring = [*zip(slon, slat, strict=True), (slon[0], slat[0])]
    features.append(
        {"type": "Feature", "properties": {"class": 4}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    )
    path = tmp_path / "wgs84.geojson"  # plain JSON: GeoJSON is always lon/lat on WGS 84
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = whole(VectorLabels(path), (20, 30))
    expected = np.full((20, 30), 255, np.uint8)
    expected[10:14, 2:7] = 4
    for (r, c), v in zip(pixels, [1, 2, 3], strict=True):
        expected[r, c] = v
    np.testing.assert_array_equal(out, expected)


def test_string_class_names_are_looked_up(tmp_path):
    points = [shapely.Point(*centre(r, 0)) for r in range(4)]
    path = write_vectors(tmp_path / "n.gpkg", points, {"landcover": ["forest", "water", "forest", "urban"]})
    labels = VectorLabels(path, attribute="landcover", classes=["water", "forest", "urban"])
    np.testing.assert_array_equal(whole(labels, (4, 1))[:, 0], [1, 0, 1, 2])
    with pytest.raises(InputError, match=r"holds 'forest', 'urban', not among the classes 'water', 'grass'"):
        VectorLabels(path, attribute="landcover", classes=["water", "grass"])
    with pytest.raises(InputError, match="holds class names; give the class names"):
        VectorLabels(path, attribute="landcover")
    ignored = VectorLabels(path, attribute="landcover", classes=["water", "forest"], ignore=["urban"])
    np.testing.assert_array_equal(whole(ignored, (4, 1))[:, 0], [1, 0, 1, 255])


def test_one_based_labels_with_an_offset_and_ignored_values_burn_nodata(tmp_path):
    big = shapely.box(*UTM_TRANSFORM @ (0, 10), *UTM_TRANSFORM @ (10, 0))  # pixels [0, 10) x [0, 10)
    small = shapely.box(*UTM_TRANSFORM @ (2, 7), *UTM_TRANSFORM @ (7, 2))  # pixels [2, 7) x [2, 7)
    path = write_vectors(tmp_path / "o.gpkg", [big, small], {"class": np.array([2, 9], np.int32)})
    out = whole(VectorLabels(path, offset=1, ignore=[9], classes=["a", "b"]), (10, 10))
    assert out[0, 0] == 1 and out[9, 9] == 1
    assert (out[2:7, 2:7] == 255).all() and (out != 255).sum() == 75  # the ignored polygon hides what is under it
    with pytest.raises(InputError, match=r"holds '2' in 1 features; class values must be 0..1 \(label offset 0\)"):
        VectorLabels(path, ignore=[9], classes=["a", "b"])


def test_the_class_attribute_is_found_or_asked_for(tmp_path):
    points = [shapely.Point(*centre(0, 0))]
    one = write_vectors(tmp_path / "one.gpkg", points, {"name": ["x"], "Label": [1]})
    assert VectorLabels(one).attribute == "Label"
    two = write_vectors(tmp_path / "two.gpkg", points, {"class": [1], "label": [2]})
    with pytest.raises(InputError, match="several class attributes \\('class', 'label'\\); pick one with attribute"):
        VectorLabels(two)
    assert VectorLabels(two, attribute="label").values.tolist() == [2]
    none = write_vectors(tmp_path / "none.gpkg", points, {"kind": [1], "area": [2.0]})
    with pytest.raises(InputError, match="no field named like 'class' or 'label'; its attributes are 'kind', 'area'"):
        VectorLabels(none)
    with pytest.raises(InputError, match="has no attribute 'klass'; its attributes are 'kind', 'area'"):
        VectorLabels(none, attribute="klass")
    with pytest.raises(InputError, match="holds fractions"):
        VectorLabels(write_vectors(tmp_path / "f.gpkg", points, {"class": [1.5]}))


def test_features_without_a_value_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "gaps.geojson"
    features = [
        {"type": "Feature", "properties": {"class": v}, "geometry": g}
        for v, g in [
            (1, {"type": "Point", "coordinates": [15.0, 54.0]}),
            (None, {"type": "Point", "coordinates": [15.0, 54.0]}),
            (2, None),
        ]
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.warns(UserWarning, match="2 of 3 features have no geometry or no 'class'; skipped"):
        labels = VectorLabels(path)
    assert labels.values.tolist() == [1]


def test_bad_files_are_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="labels .*missing.gpkg do not exist"):
        VectorLabels(tmp_path / "missing.gpkg")
    (tmp_path / "notes.geojson").write_text("not a vector file")
    with pytest.raises(SourceError, match="cannot read .*notes.geojson as vector labels"):
        VectorLabels(tmp_path / "notes.geojson")


def test_a_crs_missing_on_one_side_is_taken_from_the_other_and_on_both_refused(tmp_path):
    with pytest.warns(UserWarning, match="'crs' was not provided"):  # pyogrio's
        path = write_vectors(tmp_path / "nocrs.shp", [shapely.Point(2.5, 3.5)], {"class": [1]}, crs=None)
    labels = VectorLabels(path)
    assert labels.crs_wkt is None
    with pytest.raises(InputError, match="neither .*nocrs.shp nor the image has a CRS"):
        whole(labels, (5, 5), Georef(None))
    with pytest.warns(UserWarning, match="nocrs.shp has no CRS: the labels' coordinates are taken as the image's"):
        out = whole(labels, (5, 5), Georef(UTM))
    assert out[3, 2] == 1  # identity transform: x is the column
    given = VectorLabels(path, crs_wkt=UTM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert whole(given, (5, 5), Georef(UTM))[3, 2] == 1


def test_vector_paths_are_told_by_their_ending():
    assert is_vector_path("a/b.GPKG") and is_vector_path("x.geojson") and is_vector_path("x.shp")
    assert not is_vector_path("x.tif") and not is_vector_path("x.vrt")
