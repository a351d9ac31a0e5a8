import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigaseg.tiler import BlockGrid, Stitcher, TileGrid, argmax, blend_window
from tests.conftest import needs_cuda
from tests.test_tiler_grid import grids


def stitch_region(grid, region, scores_of, classes, *, depth=None, chunk=1, order=None, labels=None):
    """Stream the grid's tiles through a Stitcher as the pipeline does; return the region's
    probabilities (and its labels, into ``labels`` when given)."""
    stitcher = Stitcher(grid, region, classes, depth=depth, order=order)
    ranges = grid.tiles_overlapping(region)
    out = np.zeros((classes, *region.shape), np.float32)
    for row in ranges[0]:
        for rest in itertools.product(*ranges[1:]):
            box = grid.tile_box((row, *rest))
            stitcher.add(box, scores_of(box), np.ones(box.shape, bool))
        last = row == ranges[0][-1]
        until = region.stop[0] if last else grid.origins[0][row + 1] // chunk * chunk
        if until > stitcher.start:
            rows = stitcher.release(until, scores=True)
            out[(slice(None), *rows.box.slices(region.start))] = rows.scores
            if labels is not None:
                assert rows.labels.flags.c_contiguous
                labels[rows.box.slices(region.start)] = rows.labels
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
    stitcher = Stitcher(grid, region, 1, depth=12)
    box = grid.tile_box((3, 0))
    with pytest.raises(ValueError, match="grid order"):
        stitcher.add(box, np.ones((1, *box.shape), np.float32), np.ones(box.shape, bool))


def whole_region(grid):
    return BlockGrid.create(grid.shape, max_block=10**6, chunk=10**6).block_box((0,) * grid.ndim)


@given(grids())
@settings(max_examples=100, deadline=None)
def test_separable_weight_sums_equal_every_tile_window_added_up(grid):
    window = blend_window("gaussian", grid.tile).astype(np.float64)
    dense = np.zeros(grid.shape)
    for index in itertools.product(*(range(c) for c in grid.counts)):
        box = grid.tile_box(index)
        dense[box.slices()] += window[tuple(slice(0, n) for n in box.shape)]
    stitcher = Stitcher(grid, whole_region(grid), 1)
    np.testing.assert_allclose(stitcher.weights(slice(0, grid.shape[0])), dense, rtol=1e-6)


@given(grids(ndim=2), st.integers(2, 5))
@settings(max_examples=60, deadline=None)
def test_labels_are_the_argmax_of_the_released_probabilities(grid, classes):
    rng = np.random.default_rng(1)
    field = rng.random((classes, *grid.shape)).astype(np.float32)
    region = whole_region(grid)
    stitcher = Stitcher(grid, region, classes)
    for index in itertools.product(*(range(c) for c in grid.counts)):
        box = grid.tile_box(index)
        stitcher.add(box, field[(slice(None), *box.slices())], np.ones(box.shape, bool))
    rows = stitcher.release(region.stop[0], scores=True)
    top2 = np.sort(rows.scores, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5  # near-ties may round either way after the division
    assert np.array_equal(rows.labels[clear], rows.scores.argmax(axis=0)[clear])
    assert rows.labels.dtype == np.uint8


@given(st.integers(1, 300), st.lists(st.integers(1, 12), min_size=1, max_size=3), st.integers(0, 2**16))
@settings(max_examples=80, deadline=None)
def test_argmax_equals_numpys_on_any_layout(classes, shape, seed):
    scores = np.random.default_rng(seed).integers(0, 3, (classes, *shape)).astype(np.float32)  # many ties
    expected = scores.argmax(axis=0)
    assert np.array_equal(argmax(scores), expected)
    reversed_layout = np.ascontiguousarray(scores.transpose(0, *range(scores.ndim - 1, 0, -1)))
    assert np.array_equal(argmax(reversed_layout.transpose(0, *range(scores.ndim - 1, 0, -1))), expected)


def test_argmax_takes_the_first_class_on_ties_as_numpy_does():
    scores = np.array([[1, 3, 2, 2], [1, 3, 5, 1], [0, 3, 5, 2]], np.float32)
    assert argmax(scores).tolist() == scores.argmax(axis=0).tolist() == [0, 0, 1, 0]
    assert argmax(np.zeros((300, 2), np.float32)).dtype == np.uint16


def test_released_rows_without_probabilities_carry_labels_only():
    grid = TileGrid.create((20, 10), 8, 2)
    stitcher = Stitcher(grid, whole_region(grid), 2, depth=14)
    for index in itertools.product(range(grid.counts[0]), range(grid.counts[1])):
        box = grid.tile_box(index)
        scores = np.stack([np.ones(box.shape), np.full(box.shape, 2.0)]).astype(np.float32)
        stitcher.add(box, scores, np.ones(box.shape, bool))
        if index == (0, grid.counts[1] - 1):
            rows = stitcher.release(grid.origins[0][1])
            assert rows.scores is None and (rows.labels == 1).all()


@given(grids(ndim=3), st.permutations(range(3)), st.integers(1, 9))
@settings(max_examples=80, deadline=None)
def test_a_band_laid_out_in_the_scores_order_gives_the_same_bits(grid, order, chunk):
    """Scores that arrive laid out in another axis order (a 3-D network's (i, j, k)) are
    added into a band laid out the same way: labels and probabilities do not change."""
    rng = np.random.default_rng(2)
    field = rng.random((3, *grid.shape)).astype(np.float32)
    order = tuple(order)

    def scores_of(box, order=None):
        scores = field[(slice(None), *box.slices())] * (1 + box.start[0] % 3)
        if order is None:
            return scores
        memory = np.ascontiguousarray(scores.transpose(0, *(1 + a for a in order)))
        return memory.transpose(0, *(1 + order.index(a) for a in range(3)))

    region = whole_region(grid)
    depth = grid.tile[0] + chunk
    labels, labels_in_order = (np.zeros(grid.shape, np.uint8) for _ in range(2))
    expected = stitch_region(grid, region, scores_of, 3, depth=depth, chunk=chunk, labels=labels)
    got = stitch_region(
        grid,
        region,
        lambda box: scores_of(box, order),
        3,
        depth=depth,
        chunk=chunk,
        order=order,
        labels=labels_in_order,
    )
    assert np.array_equal(got, expected)
    assert np.array_equal(labels_in_order, labels)


def test_an_order_that_is_not_a_permutation_is_refused():
    grid = TileGrid.create((20, 10), 8, 2)
    with pytest.raises(ValueError, match="permutation"):
        Stitcher(grid, whole_region(grid), 2, order=(0, 0))


# --- the device-resident stitcher -----------------------------------------------------------


def numpy_oracle(grid, region, scores_of, classes):
    """A plain numpy accumulation over the whole region: float32 ``acc += scores * window``
    in global tile order, labels by argmax, probabilities by the product of the 1-D sums."""
    window = blend_window("gaussian", grid.tile)
    acc = np.zeros((classes, *region.shape), np.float32)
    for index in itertools.product(*(range(c) for c in grid.counts)):
        box = grid.tile_box(index)
        part = box.intersection(region)
        if part is None:
            continue
        src = part.slices(box.start)
        weighted = np.multiply(scores_of(box)[(slice(None), *src)], window[src])
        acc[(slice(None), *part.slices(region.start))] += weighted
    sums = Stitcher(grid, region, classes)._sums
    weights = sums[0].numpy()
    for s in sums[1:]:
        weights = np.multiply.outer(weights, s.numpy())
    return acc.argmax(axis=0), acc / weights


@given(grids(), st.integers(1, 9), st.integers(2, 5))
@settings(max_examples=80, deadline=None)
def test_the_torch_stitcher_equals_a_numpy_accumulation_bit_for_bit(grid, chunk, classes):
    """On the CPU: the same multiply and add per element, in the same order, so the same bits;
    with a ring band that wraps (depth = tile + chunk rows) and releases of any height."""
    field = np.random.default_rng(4).random((classes, *grid.shape)).astype(np.float32)

    def scores_of(box):
        return field[(slice(None), *box.slices())] * np.float32(1 + box.start[0] % 3)

    region = whole_region(grid)
    labels = np.zeros(grid.shape, np.uint8)
    got = stitch_region(grid, region, scores_of, classes, depth=grid.tile[0] + chunk, chunk=chunk, labels=labels)
    expected_labels, expected = numpy_oracle(grid, region, scores_of, classes)
    assert np.array_equal(got, expected)
    assert np.array_equal(labels, expected_labels)


def test_released_rows_carry_nodata_and_probabilities_in_the_store_dtype():
    grid = TileGrid.create((12, 10), 8, 2)
    region = whole_region(grid)
    field = np.random.default_rng(5).random((3, *grid.shape)).astype(np.float32)
    valid = np.ones(grid.shape, bool)
    valid[2:4, 3:7] = False
    rows = {}
    for kind in ("float32", "float16", "uint8"):
        stitcher = Stitcher(grid, region, 3, nodata=255)
        for index in itertools.product(*(range(c) for c in grid.counts)):
            box = grid.tile_box(index)
            stitcher.add(box, field[(slice(None), *box.slices())], valid[box.slices()])
        rows[kind] = stitcher.release(region.stop[0], scores=kind)
    p = rows["float32"].scores
    assert (rows["float32"].labels[~valid] == 255).all() and (rows["float32"].labels[valid] < 3).all()
    assert (p[:, ~valid] == 0).all()
    assert np.array_equal(rows["float16"].scores, p.astype(np.float16))
    assert np.array_equal(rows["uint8"].scores, np.rint(p * 255).astype(np.uint8))


@pytest.mark.parametrize("classes", [3, 20])
def test_logits_made_probabilities_piece_by_piece_match_whole_tile_probabilities(classes):
    """``softmax=True`` (the pipeline's CPU path) against probabilities computed per whole tile."""
    import torch

    grid = TileGrid.create((70, 90), 32, 8)
    region = whole_region(grid)
    logits = np.random.default_rng(6).normal(size=(classes, *grid.shape)).astype(np.float32)
    raw = Stitcher(grid, region, classes, softmax=True)
    plain = Stitcher(grid, region, classes)
    for index in itertools.product(*(range(c) for c in grid.counts)):
        box = grid.tile_box(index)
        tile = logits[(slice(None), *box.slices())]
        cl = torch.from_numpy(np.ascontiguousarray(np.moveaxis(tile, 0, -1))).permute(2, 0, 1)  # classes last
        raw.add_batch([box], cl[None].clone())
        raw.set_valid(box, torch.ones(box.shape, dtype=torch.bool))
        plain.add(box, torch.softmax(torch.from_numpy(tile), 0).numpy(), np.ones(box.shape, bool))
    a, b = raw.release(region.stop[0], scores=True), plain.release(region.stop[0], scores=True)
    np.testing.assert_allclose(a.scores, b.scores, atol=2e-6)


@needs_cuda
@given(grids(), st.integers(1, 9))
@settings(max_examples=40, deadline=None)
def test_on_cuda_labels_equal_the_cpus_but_at_ties_and_probabilities_agree(grid, chunk):
    import torch

    classes = 4
    field = np.random.default_rng(7).random((classes, *grid.shape)).astype(np.float32)
    region = whole_region(grid)
    depth = grid.tile[0] + chunk
    found = {}
    for device in ("cpu", "cuda"):
        stitcher = Stitcher(grid, region, classes, depth=depth, device=device)
        labels, probs = np.zeros(grid.shape, np.uint8), np.zeros((classes, *grid.shape), np.float32)
        for row in range(grid.counts[0]):
            for rest in itertools.product(*(range(c) for c in grid.counts[1:])):
                box = grid.tile_box((row, *rest))
                scores = torch.from_numpy(field[(slice(None), *box.slices())].copy()).to(device)
                stitcher.add(box, scores, torch.ones(box.shape, dtype=torch.bool, device=device))
            until = region.stop[0] if row == grid.counts[0] - 1 else grid.origins[0][row + 1] // chunk * chunk
            if until > stitcher.start:
                rows = stitcher.release(until, scores=True).wait()
                labels[rows.box.slices()] = rows.labels
                probs[(slice(None), *rows.box.slices())] = rows.scores
        found[device] = labels, probs
    (cpu_labels, cpu_probs), (gpu_labels, gpu_probs) = found["cpu"], found["cuda"]
    np.testing.assert_allclose(gpu_probs, cpu_probs, rtol=1e-5, atol=1e-6)
    top2 = np.sort(cpu_probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5
    assert np.array_equal(gpu_labels[clear], cpu_labels[clear])


@given(grids(ndim=2), st.integers(1, 40), st.integers(1, 9), st.integers(1, 7))
@settings(max_examples=80, deadline=None)
def test_whole_batches_with_strided_rows_give_the_bits_of_tile_by_tile_adds(grid, max_block, chunk, batch):
    """The device path (batch-wide weighting, evenly spaced tiles of a row added as strided
    windows) against the plain numpy accumulation, block by block: the same bits."""
    import torch

    field = np.random.default_rng(8).random((3, *grid.shape)).astype(np.float32)
    window = blend_window("gaussian", grid.tile)

    def padded(box):
        scores = np.zeros((3, *grid.tile), np.float32)
        scores[(slice(None), *(slice(0, n) for n in box.shape))] = field[(slice(None), *box.slices())]
        return scores * np.float32(1 + box.start[1] % 4)

    blocks = BlockGrid.create(grid.shape, max_block=max_block, chunk=chunk)
    got = np.zeros((3, *grid.shape), np.float32)
    for index in blocks.indices():
        region = blocks.block_box(index)
        stitcher = Stitcher(grid, region, 3, depth=grid.tile[0] + blocks.chunk[0])
        stitcher.whole_batches = True
        ranges = grid.tiles_overlapping(region)
        tiles = [grid.tile_box(i) for i in itertools.product(*ranges)]
        for row in ranges[0]:
            in_row = [t for t in tiles if t.start[0] == grid.origins[0][row]]
            for k in range(0, len(in_row), batch):
                part = in_row[k : k + batch]
                stitcher.add_batch(part, torch.from_numpy(np.stack([padded(t) for t in part])))
                stitcher.set_valid(part[0].union(part[-1]), torch.ones(part[0].union(part[-1]).shape, dtype=torch.bool))
            until = (
                region.stop[0]
                if row == ranges[0][-1]
                else grid.origins[0][row + 1] // blocks.chunk[0] * blocks.chunk[0]
            )
            if until > stitcher.start:
                rows = stitcher.release(until, scores=True)
                got[(slice(None), *rows.box.slices())] = rows.scores
    _, expected = numpy_oracle(
        grid, whole_region(grid), lambda b: padded(b)[(slice(None), *(slice(0, n) for n in b.shape))], 3
    )
    assert np.array_equal(got, expected)
    del window
