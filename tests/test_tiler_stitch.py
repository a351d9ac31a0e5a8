import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.tiler import BlockGrid, Stitcher, TileGrid, blend_window
from tests.test_tiler_grid import grids


def stitch_region(grid, region, scores_of, classes, *, depth=None, chunk=1):
    """Stream the grid's tiles through a Stitcher as the pipeline does; return the region."""
    stitcher = Stitcher(region, classes, depth=depth)
    window = blend_window("gaussian", grid.tile)
    ranges = grid.tiles_overlapping(region)
    out = np.zeros((classes, *region.shape), np.float32)
    for row in ranges[0]:
        for rest in itertools.product(*ranges[1:]):
            box = grid.tile_box((row, *rest))
            inner = tuple(slice(0, n) for n in box.shape)
            stitcher.add(box, scores_of(box), window[inner], np.ones(box.shape, bool))
        last = row == ranges[0][-1]
        until = region.stop[0] if last else grid.origins[0][row + 1] // chunk * chunk
        if until > stitcher.start:
            box, values, _ = stitcher.release(until)
            out[(slice(None), *box.slices(region.start))] = values
    return out


@given(grids(), st.floats(-5, 5, allow_nan=False))
@settings(max_examples=100, deadline=None)
def test_stitching_a_constant_returns_it_exactly(grid, value):
    region = BlockGrid.create(grid.shape, max_block=10**6, chunk=8).block_box((0,) * grid.ndim)
    out = stitch_region(grid, region, lambda b: np.full((2, *b.shape), value, np.float32), 2)
    np.testing.assert_allclose(out, value, rtol=1e-6, atol=1e-6)


@given(grids(ndim=2), st.integers(1, 30), st.integers(1, 9))
@settings(max_examples=80, deadline=None)
def test_blocks_with_a_rolling_band_equal_one_whole_region_bit_for_bit(grid, max_block, chunk):
    rng = np.random.default_rng(0)
    field = rng.random((3, *grid.shape)).astype(np.float32)

    def scores_of(box):  # a tile's scores depend on the tile, as a network's do
        return field[(slice(None), *box.slices())] * (1 + box.start[0] % 3 + box.start[1] % 5)

    whole = BlockGrid.create(grid.shape, max_block=10**6, chunk=10**6).block_box((0, 0))
    expected = stitch_region(grid, whole, scores_of, 3)
    blocks = BlockGrid.create(grid.shape, max_block=max_block, chunk=chunk)
    got = np.zeros_like(expected)
    for index in blocks.indices():
        box = blocks.block_box(index)
        got[(slice(None), *box.slices())] = stitch_region(
            grid, box, scores_of, 3, depth=grid.tile[0] + blocks.chunk[0], chunk=blocks.chunk[0]
        )
    assert np.array_equal(got, expected)


def test_out_of_order_tiles_are_refused():
    grid = TileGrid.create((40, 10), 8, 2)
    region = BlockGrid.create(grid.shape, max_block=40, chunk=4).block_box((0, 0))
    stitcher = Stitcher(region, 1, depth=12)
    box = grid.tile_box((3, 0))
    with pytest.raises(ValueError, match="grid order"):
        stitcher.add(
            box,
            np.ones((1, *box.shape), np.float32),
            np.ones(box.shape, np.float32),
            np.ones(box.shape, bool),
        )
