"""Seeded, procedurally generated imagery for demos, training, tests and benchmarks.

`landcover_scene` renders a Sentinel-2-like land-cover scene that is a pure function of
absolute pixel coordinates: every value comes from hashed lattice noise, never from a
random generator run over the window, so any window of a scene equals the same crop of
a larger call with the same seed, bit for bit. `organ_volume` renders a small CT-like
volume with labelled organs.
"""

from typing import overload

import numpy as np
from scipy import ndimage

CLASSES = ("water", "vegetation", "built-up", "bare")
COLORS = ("#2b6cb0", "#38a169", "#e53e3e", "#d69e2e")

WATER, VEGETATION, BUILT_UP, BARE = range(4)

# Surface reflectance x 10000, bands blue, green, red, NIR, SWIR1, SWIR2.
WATER_SPECTRUM = np.array([620, 560, 330, 140, 60, 40], dtype=np.float32)
SEDIMENT = np.array([180, 320, 380, 160, 20, 10], dtype=np.float32)
PLANT_SPECTRUM = np.array([380, 680, 380, 3300, 1650, 800], dtype=np.float32)
VIGOUR_GAIN = np.array([-0.6, -0.3, -0.7, 0.5, -0.2, -0.4], dtype=np.float32)
SOIL_SPECTRUM = np.array([900, 1250, 1750, 2400, 3000, 2600], dtype=np.float32)
ASPHALT = np.array([720, 760, 800, 950, 1100, 1000], dtype=np.float32)
ROOFS = np.array(
    [
        [1150, 1180, 1250, 1700, 1950, 1750],  # concrete
        [850, 1000, 1450, 1900, 2500, 2200],  # clay tile
        [600, 650, 700, 850, 1000, 900],  # dark sheeting
    ],
    dtype=np.float32,
)

# Thresholds on the fractal fields (each roughly N(0.5, 0.13), changing by about
# 0.5 / scale per pixel), river width as a fraction of the feature size, and the width in
# pixels over which neighbouring classes blend at region edges.
LAKE_LEVEL = 0.33
URBAN_LEVEL = 0.61
VEGETATION_LEVEL = 0.47
RIVER_WIDTH = 0.1
EDGE_PIXELS = 3.0

_MASK = 0xFFFFFFFF


@overload
def _mix(h: int) -> int: ...
@overload
def _mix(h: np.ndarray) -> np.ndarray: ...
def _mix(h: int | np.ndarray) -> int | np.ndarray:
    """lowbias32 integer hash; works on Python ints and uint32 arrays alike."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & _MASK
    return h ^ (h >> 16)


def _key(seed: int, stream: int) -> int:
    """A 32-bit key for one named random stream of a seed."""
    h = _mix(_mix(seed & _MASK) ^ ((seed >> 32) & _MASK))
    return _mix(h ^ _mix((stream * 0x9E3779B9) & _MASK))


def _hash2(y: np.ndarray, x: np.ndarray, key: int) -> np.ndarray:
    """uint32 hash of every (y, x) pair of integer coordinate vectors, shape (len(y), len(x))."""
    hy = _mix((y & _MASK).astype(np.uint32) ^ np.uint32(key))
    hx = _mix((x & _MASK).astype(np.uint32) ^ np.uint32(_mix(key ^ 0x5BD1E995)))
    return _mix(hy[:, None] ^ hx[None, :])


def _unit(h: np.ndarray) -> np.ndarray:
    """Map uint32 hashes to float32 in [0, 1)."""
    return (h >> 8).astype(np.float32) * np.float32(2.0**-24)


def _axis(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice cell index and smoothstep weight of absolute coordinates along one axis."""
    t = coords / scale
    cell = np.floor(t)
    f = t - cell
    return cell.astype(np.int64), (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def _value_noise(y: np.ndarray, x: np.ndarray, scale: float, key: int) -> np.ndarray:
    """Smooth value noise in [0, 1) at absolute coordinates: hashed lattice, interpolated."""
    cy, wy = _axis(y, scale)
    cx, wx = _axis(x, scale)
    ly = np.arange(cy[0], cy[-1] + 2)
    lx = np.arange(cx[0], cx[-1] + 2)
    lattice = _unit(_hash2(ly, lx, key))
    jx = cx - lx[0]
    rows = lattice[:, jx] + (lattice[:, jx + 1] - lattice[:, jx]) * wx
    jy = cy - ly[0]
    steps = rows[1:] - rows[:-1]
    return rows[jy] + steps[jy] * wy[:, None]


def _fractal(
    y: np.ndarray, x: np.ndarray, scale: float, octaves: int, key: int, persistence: float = 0.5
) -> np.ndarray:
    """Multi-octave value noise in [0, 1), each octave on a shifted lattice."""
    total = np.zeros((len(y), len(x)), dtype=np.float32)
    weight = 0.0
    for octave in range(octaves):
        k = _key(key, octave)
        shift = float(k % 4096)
        amplitude = persistence**octave
        total += np.float32(amplitude) * _value_noise(y + shift, x + shift, scale / 2**octave, k)
        weight += amplitude
    total *= np.float32(1.0 / weight)
    return total


def _ramp(distance: np.ndarray, scale: float) -> np.ndarray:
    """Coverage in [0, 1] where a field of `scale` is `distance` above its threshold."""
    return np.clip(distance * np.float32(2.0 * scale / EDGE_PIXELS) + np.float32(0.5), 0.0, 1.0)


def _streets(coords: np.ndarray, block: int, width: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """Block index and street mask along one axis; streets sit at a hashed spot per block."""
    cell = coords // block
    spot = _mix((cell & _MASK).astype(np.uint32) ^ np.uint32(key)) % np.uint32(block - width)
    return cell, (coords - cell * block - spot.astype(np.int64)) % block < width


def _sensor_noise(y: np.ndarray, x: np.ndarray, key: int) -> np.ndarray:
    """Per-pixel triangular noise in (-1, 1) hashed from absolute coordinates."""
    h = _hash2(y, x, key)
    return ((h & 0xFFFF).astype(np.float32) + (h >> 16).astype(np.float32)) * np.float32(1 / 65536) - np.float32(1.0)


def _signature(band: int) -> int:
    """Column of the spectral tables used for band `band` (B, G, R, NIR, SWIR1, SWIR2, ...)."""
    return band % len(SOIL_SPECTRUM)


def landcover_scene(
    shape: tuple[int, int],
    *,
    seed: int = 0,
    bands: int = 4,
    offset: tuple[int, int] = (0, 0),
    feature_size: float = 96.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a window of an endless synthetic land-cover scene.

    Returns `(image, labels)`: image is `(bands, H, W)` uint16 surface reflectance x 10000
    (bands blue, green, red, near-infrared, then SWIR1, SWIR2, repeating beyond six), labels
    is `(H, W)` uint8 indices into `CLASSES`. `offset` is the absolute (row, col) of the
    window's top-left pixel; a window equals the same crop of a larger call exactly.
    `feature_size` is the typical size of land-cover regions in pixels.
    """
    height, width = shape
    y = np.arange(offset[0], offset[0] + height, dtype=np.int64)
    x = np.arange(offset[1], offset[1] + width, dtype=np.int64)
    yf, xf = y.astype(np.float64), x.astype(np.float64)

    def field(stream: int, scale: float, octaves: int) -> np.ndarray:
        return _fractal(yf, xf, scale, octaves, _key(seed, stream))

    lake_scale, river_scale, urban_scale = 2.5 * feature_size, 8.0 * feature_size, 2.0 * feature_size
    lake = _ramp(LAKE_LEVEL - field(1, lake_scale, 5), lake_scale)
    river_half_width = 0.25 * RIVER_WIDTH * feature_size / river_scale
    river_offset = np.abs(field(2, river_scale, 4) - np.float32(0.5))
    river = _ramp(river_half_width - river_offset, river_scale)
    water = np.maximum(lake, river)
    urban = _ramp(field(3, urban_scale, 5) - URBAN_LEVEL, urban_scale)
    green = _ramp(field(4, feature_size, 5) - VEGETATION_LEVEL, feature_size)

    labels = np.full(shape, BARE, dtype=np.uint8)
    labels[green > 0.5] = VEGETATION
    labels[urban > 0.5] = BUILT_UP
    labels[water > 0.5] = WATER

    soil = field(5, 24.0, 3) * np.float32(0.9) + np.float32(0.55)
    vigour = field(6, 32.0, 3) - np.float32(0.5)
    cover = np.clip(np.float32(0.75) + np.float32(2.0) * vigour, 0.25, 1.0)
    sparse = np.clip(np.float32(1.6) * field(7, 32.0, 3) - np.float32(0.7), 0.0, 0.45)
    turbidity = field(8, 64.0, 2) * np.float32(1.5)
    grain = field(9, 2.5, 2) - np.float32(0.5)

    block = max(6, round(feature_size / 8))
    street_width = 2 if block >= 10 else 1
    by, street_y = _streets(y, block, street_width, _key(seed, 10))
    bx, street_x = _streets(x, block, street_width, _key(seed, 11))
    street = street_y[:, None] | street_x[None, :]
    blocks = np.arange(by[0], by[-1] + 1), np.arange(bx[0], bx[-1] + 1)
    pick = _unit(_hash2(*blocks, _key(seed, 12))) * np.float32(len(ROOFS))
    material = pick.astype(np.intp)
    brightness = np.float32(0.75) + np.float32(0.5) * _unit(_hash2(*blocks, _key(seed, 13)))
    jy, jx = np.ix_(by - by[0], bx - bx[0])
    garden = np.where(street, np.float32(0.0), (pick - material < 0.15)[jy, jx] * np.float32(0.5))

    image = np.empty((bands, height, width), dtype=np.uint16)
    for band in range(bands):
        s = _signature(band)
        ground = SOIL_SPECTRUM[s] * soil
        plants = PLANT_SPECTRUM[s] * (np.float32(1.0) + VIGOUR_GAIN[s] * vigour) - ground
        bare = ground + plants * sparse
        vegetation = ground + plants * cover
        built = np.where(street, ASPHALT[s], (ROOFS[material, s] * brightness)[jy, jx])
        built += (vegetation - built) * garden
        built *= np.float32(1.0) + np.float32(1.2) * grain
        wet = WATER_SPECTRUM[s] + SEDIMENT[s] * turbidity

        value = bare + (vegetation - bare) * green
        value += (built - value) * urban
        value += (wet - value) * water
        value *= np.float32(1.0) + np.float32(0.3) * grain
        sigma = np.float32(120.0) + np.float32(0.04) * value
        value += sigma * _sensor_noise(y, x, _key(seed, 100 + band))
        image[band] = np.clip(np.rint(value), 0, 10000)
    return image, labels


def organ_volume(shape: tuple[int, int, int], *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a CT-like volume in Hounsfield units with three labelled organs.

    Returns `(volume, labels)`: volume is float32 `(D, H, W)`, air (-1000) around a body
    ellipsoid of soft tissue (~40) with a fat rim and a bony spine, three randomly oriented
    organ ellipsoids (1: ~60, 2: ~150, 3: ~10 HU), a smooth bias field and noise; labels
    is uint8, 0 for background and body, 1..3 for the organs.
    """
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)

    body = (z / 0.95) ** 2 + (y / rng.uniform(0.7, 0.85)) ** 2 + (x / rng.uniform(0.8, 0.92)) ** 2
    volume = np.where(body <= 1.0, np.float32(40.0), np.float32(-1000.0))
    volume = np.where((body > 0.82) & (body <= 1.0), np.float32(-100.0), volume)
    spine = ((y - 0.55) / 0.1) ** 2 + (x / 0.1) ** 2 <= 1.0
    volume = np.where(spine & (body <= 1.0), np.float32(700.0), volume)

    labels = np.zeros(shape, dtype=np.uint8)
    centres = [(0.0, -0.3), (0.15, 0.3), (-0.35, 0.1)]
    for organ, (hu, (cy, cx)) in enumerate(zip((60.0, 150.0, 10.0), centres, strict=True), 1):
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
        radii = rng.uniform(0.18, 0.32, size=3).astype(np.float32)
        centre = (rng.uniform(-0.3, 0.3), cy + rng.uniform(-0.05, 0.05), cx + rng.uniform(-0.05, 0.05))
        d = [c - a for c, a in zip(centre, (z, y, x), strict=True)]
        distance = sum(
            ((r[0] * d[0] + r[1] * d[1] + r[2] * d[2]) / a) ** 2 for r, a in zip(rotation, radii, strict=True)
        )
        inside = (distance <= 1.0) & (body <= 0.82)
        labels[inside] = organ
        volume[inside] = hu

    volume = ndimage.gaussian_filter(volume, sigma=0.7)
    coefficients = rng.normal(scale=12.0, size=4).astype(np.float32)
    bias = coefficients[0] * z + coefficients[1] * y + coefficients[2] * x + coefficients[3] * y * x
    volume += np.where(volume > -500.0, bias, np.float32(0.0))
    volume += rng.normal(scale=15.0, size=shape).astype(np.float32)
    return volume, labels
