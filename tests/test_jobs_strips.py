import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.jobs.strips import UNIT_ROWS, read_strips
from gigaseg.tiler import TileGrid


@given(st.integers(1, 700), st.sampled_from([1, 16, 64, 512]), st.integers(2, 9), st.integers(1, 4))
@settings(max_examples=60, deadline=None)
def test_strips_cut_from_block_row_units_equal_direct_reads_and_each_unit_is_read_once(height, block, tile8, workers):
    """Overlapping tile rows over a file's block rows: every strip equals a direct read of its box,
    keeps the pixel-interleaved layout, and every unit of whole block rows is read once."""
    image = np.random.default_rng(height).integers(0, 255, (height, 37, 3), dtype=np.uint8)
    grid = TileGrid.create((height, 37), tile8 * 8, tile8 * 2)
    boxes = [grid.tile_box((r, 0)).union(grid.tile_box((r, grid.counts[1] - 1))) for r in range(grid.counts[0])]
    reads = []

    def read(box):
        reads.append(box)
        rows, cols = box.slices()
        return np.moveaxis(image[rows, cols], -1, 0), np.ones(box.shape, bool)

    strips = list(read_strips(read, boxes, block_rows=block, device=torch.device("cpu"), workers=workers))
    assert [s.box for s in strips] == boxes
    for strip, box in zip(strips, boxes, strict=True):
        rows, cols = box.slices()
        assert np.array_equal(strip.data.numpy(), np.moveaxis(image[rows, cols], -1, 0))
        assert strip.data.stride(0) == 1  # still pixel-interleaved
    starts = [b.start[0] for b in reads]
    assert len(starts) == len(set(starts))  # no unit twice
    unit = block * -(-UNIT_ROWS // block)
    assert all(s % unit == 0 for s in starts[1:])
    assert sum(b.shape[0] for b in reads) == boxes[-1].stop[0] - boxes[0].start[0]
