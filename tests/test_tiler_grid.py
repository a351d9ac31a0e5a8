import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.errors import InputError
from gigaseg.tiler import BlockGrid, Box, TileGrid, axis_origins, halo_overhead, read_box, to_pixels


@st.composite
def grids(draw, ndim=None):
    ndim = ndim or draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(1, 90)) for _ in range(ndim))
    tile = tuple(draw(st.integers(2, 40)) for _ in range(ndim))
    overlap = tuple(draw(st.integers(0, (t - 1) // 2)) for t in tile)
    return TileGrid.create(shape, tile, overlap)


@given(grids())
@settings(max_examples=150, deadline=None)
def test_every_pixel_is_covered_and_no_tile_leaves_the_scene(grid):
    covered = np.zeros(grid.shape, np.int32)
    for index in itertools.product(*(range(c) for c in grid.counts)):
        box = grid.tile_box(index)
        assert all(0 <= a < b <= n for a, b, n in zip(box.start, box.stop, grid.shape, strict=False))
        assert all(s == min(t, n) for s, t, n in zip(box.shape, grid.tile, grid.shape, strict=False))
        covered[box.slices()] += 1
    assert covered.min() >= 1


@given(grids(), st.data())
@settings(max_examples=150, deadline=None)
def test_tiles_overlapping_matches_brute_force(grid, data):
    start = tuple(data.draw(st.integers(0, n - 1)) for n in grid.shape)
    stop = tuple(data.draw(st.integers(a + 1, n)) for a, n in zip(start, grid.shape, strict=False))
    box = Box(start, stop)
    ranges = grid.tiles_overlapping(box)
    expected = [
        i for i in itertools.product(*(range(c) for c in grid.counts)) if grid.tile_box(i).intersection(box) is not None
    ]
    assert list(itertools.product(*ranges)) == expected


@given(grids(), st.integers(1, 50), st.integers(1, 20))
@settings(max_examples=150, deadline=None)
def test_blocks_partition_the_scene_and_halos_hold_their_blocks(grid, max_block, chunk):
    blocks = BlockGrid.create(grid.shape, max_block=max_block, chunk=chunk)
    owner = np.zeros(grid.shape, np.int32)
    for index in blocks.indices():
        box = blocks.block_box(index)
        owner[box.slices()] += 1
        halo = read_box(grid, box)
        assert halo.intersection(box) == box
        assert all(
            b % c == 0 or e == n for b, c, e, n in zip(box.start, blocks.chunk, box.stop, grid.shape, strict=False)
        )
    assert (owner == 1).all()
    assert halo_overhead(grid, blocks) >= 1.0


def test_origins_shift_the_last_tile_inward():
    assert axis_origins(1000, 512, 448) == (0, 448, 488)
    assert axis_origins(512, 512, 448) == (0,)
    assert axis_origins(5, 512, 448) == (0,)
    assert axis_origins(896, 512, 448) == (0, 384)


def test_small_scene_has_one_padded_tile():
    grid = TileGrid.create((1, 1), 64, 16)
    assert grid.counts == (1, 1)
    assert grid.tile_box((0, 0)) == Box((0, 0), (1, 1))


@pytest.mark.parametrize(("tile", "overlap"), [(64, 33), (64, 40), (10, -1)])
def test_tile_must_exceed_twice_the_overlap(tile, overlap):
    with pytest.raises(InputError, match="tile must be at least twice overlap"):
        TileGrid.create((100, 100), tile, overlap)


def test_empty_scene_is_refused():
    with pytest.raises(InputError, match="empty"):
        TileGrid.create((0, 10), 8, 2)


def test_halo_overhead_at_default_settings_is_small():
    grid = TileGrid.create((20000, 20000), 512, 64)
    blocks = BlockGrid.create(grid.shape, max_block=16384, chunk=512)
    assert blocks.counts == (2, 2)
    assert halo_overhead(grid, blocks) <= 1.10


def test_a_box_reads_as_rows_and_columns_in_messages():
    assert str(Box((0, 512), (512, 1024))) == "rows 0-511, columns 512-1023"
    assert str(Box((0, 0, 0), (4, 5, 6))) == "slices 0-3, rows 0-4, columns 0-5"


def test_a_length_shorter_than_a_pixel_is_refused_not_made_one_pixel():
    from gigaseg.jobs.plan import parse_length

    assert parse_length("3840m", pixel_size=10.0) == 384 and parse_length("0m", pixel_size=10.0) == 0
    assert parse_length("80mm", pixel_size=0.8, unit="mm") == 100
    with pytest.raises(InputError, match=r"^64mm is less than one pixel here \(pixels of 10 m\)"):
        parse_length("64mm", pixel_size=10.0)  # millimetres on a 10 m grid: meant for a volume
    with pytest.raises(InputError, match=r"^9.9m is less than one pixel"):
        parse_length("9.9m", pixel_size=10.0)  # not rounded up to a 1-pixel tile


def test_lengths_in_crs_units_round_to_the_model_stride():
    assert to_pixels(5120, 10.0, multiple=32) == 512
    assert to_pixels(5000, 10.0, multiple=32) == 512
    assert to_pixels(1, 10.0, multiple=32) == 32
    with pytest.raises(InputError):
        to_pixels(100, 0.0)


@pytest.mark.parametrize(("size", "tile"), [(100, 32), (33, 32), (32, 32), (20, 32), (257, 128), (1000, 96)])
def test_even_placement_is_nnunets_sliding_window(size, tile):
    """``even`` tiles start where nnU-Net's predictor puts its patches (step 0.5)."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    theirs = compute_steps_for_sliding_window((max(size, tile),), (tile,), 0.5)[0]
    grid = TileGrid.create((size,), tile, tile // 2, "even")
    assert list(grid.origins[0]) == [int(s) for s in theirs]
