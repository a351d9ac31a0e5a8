import numpy as np
import pytest

from gigaseg.synthetic import CLASSES, COLORS, landcover_scene, organ_volume


@pytest.fixture(scope="module")
def scene():
    return landcover_scene((512, 512), seed=1)


def test_palette_matches_classes():
    assert len(COLORS) == len(CLASSES) == 4
    assert all(c.startswith("#") and len(c) == 7 for c in COLORS)


def test_scene_shapes_and_dtypes(scene):
    image, labels = scene
    assert image.shape == (4, 512, 512)
    assert image.dtype == np.uint16
    assert labels.shape == (512, 512)
    assert labels.dtype == np.uint8
    assert image.max() <= 10000
    assert labels.max() < len(CLASSES)


def test_scene_is_deterministic(scene):
    image, labels = landcover_scene((512, 512), seed=1)
    assert np.array_equal(image, scene[0])
    assert np.array_equal(labels, scene[1])
    other, _ = landcover_scene((512, 512), seed=2)
    assert not np.array_equal(other, image)


def test_all_classes_present(scene):
    counts = np.bincount(scene[1].ravel(), minlength=len(CLASSES))
    assert (counts > 0.01 * scene[1].size).all()


@pytest.fixture(scope="module")
def big_scene():
    return landcover_scene((300, 400), seed=3, bands=6, offset=(-50, 17))


@pytest.mark.parametrize(
    ("y0", "x0", "h", "w"),
    [(0, 0, 64, 64), (13, 29, 37, 53), (97, 191, 100, 7), (250, 1, 1, 300), (299, 399, 1, 1)],
)
def test_window_equals_crop_of_larger_scene(big_scene, y0, x0, h, w):
    image, labels = landcover_scene((h, w), seed=3, bands=6, offset=(y0 - 50, x0 + 17))
    assert np.array_equal(image, big_scene[0][:, y0 : y0 + h, x0 : x0 + w])
    assert np.array_equal(labels, big_scene[1][y0 : y0 + h, x0 : x0 + w])


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53)])
def test_odd_shapes(shape):
    image, labels = landcover_scene(shape, seed=5, offset=(1000, 2000))
    assert image.shape == (4, *shape)
    assert labels.shape == shape


@pytest.mark.parametrize("bands", [1, 3, 4, 6, 8])
def test_band_counts(bands):
    image, _ = landcover_scene((32, 32), bands=bands)
    assert image.shape == (bands, 32, 32)
    four, _ = landcover_scene((32, 32))
    shared = min(bands, 4)
    assert np.array_equal(image[:shared], four[:shared])


def test_class_spectra_differ(scene):
    image, labels = scene
    blue, _, red, nir = (image[b].astype(np.float64) for b in range(4))
    water, vegetation, built, bare = range(4)
    assert nir[labels == vegetation].mean() > nir[labels == bare].mean() > 4 * nir[labels == water].mean()
    assert red[labels == bare].mean() > red[labels == vegetation].mean()
    assert blue[labels == built].mean() > blue[labels == bare].mean()


def test_spectra_overlap_so_thresholds_are_imperfect(scene):
    image, labels = scene
    nir, red = image[3].astype(np.float64), image[2].astype(np.float64)
    ndvi = (nir - red) / (nir + red)
    land = labels != 0
    best = max(np.mean((ndvi[land] > t) == (labels[land] == 1)) for t in np.linspace(0, 0.8, 81))
    assert 0.7 < best < 0.99


def test_built_up_has_more_fine_texture_than_bare(scene):
    image, labels = scene
    red = image[2].astype(np.float64)
    step = np.abs(np.diff(red, axis=1))
    inner = labels[:, 1:] == labels[:, :-1]
    assert step[inner & (labels[:, 1:] == 2)].mean() > 2 * step[inner & (labels[:, 1:] == 3)].mean()


def test_feature_size_changes_region_scale():
    _, small = landcover_scene((256, 256), feature_size=16.0)
    _, large = landcover_scene((256, 256), feature_size=96.0)
    edges = [np.mean(lab[:, 1:] != lab[:, :-1]) for lab in (small, large)]
    assert edges[0] > 2 * edges[1]


@pytest.fixture(scope="module")
def volume():
    return organ_volume((32, 64, 64), seed=4)


def test_organ_volume_shapes_and_determinism(volume):
    ct, labels = volume
    assert ct.shape == labels.shape == (32, 64, 64)
    assert ct.dtype == np.float32
    assert labels.dtype == np.uint8
    again = organ_volume((32, 64, 64), seed=4)
    assert np.array_equal(again[0], ct)
    assert np.array_equal(again[1], labels)
    assert not np.array_equal(organ_volume((32, 64, 64), seed=5)[1], labels)


def test_organ_volume_labels_and_intensities(volume):
    ct, labels = volume
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.median(ct[0, 0, :8]) < -900  # air in the corner
    assert -20 < np.median(ct[labels == 0][ct[labels == 0] > -500]) < 100
    means = [np.median(ct[labels == organ]) for organ in (1, 2, 3)]
    assert 30 < means[0] < 100
    assert 110 < means[1] < 200
    assert -30 < means[2] < 40
