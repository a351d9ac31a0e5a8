import pytest

from gigaseg.errors import InputError
from gigaseg.jobs.memory import fit_block_side, footprint, gpu_batch_size, parse_bytes
from gigaseg.tiler.stitch import band_bytes


def test_memory_sizes_parse_in_decimal_and_binary_units():
    assert parse_bytes("4GiB") == 4 * 2**30 == parse_bytes(4 * 2**30)
    assert parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("512MiB") == 2**29
    assert parse_bytes(None, default=7) == 7
    for bad in ("lots", "-1GB", "0", "4 GiBs"):
        with pytest.raises(InputError, match="memory size"):
            parse_bytes(bad)


@pytest.mark.parametrize(("classes", "ndim"), [(4, 2), (104, 2), (4, 3), (104, 3), (1000, 3)])
def test_a_fitted_block_side_is_the_largest_chunk_multiple_whose_band_fits(classes, ndim):
    depth, chunk, budget = 96 + 64, 64, 4 * 2**30
    side = fit_block_side(depth=depth, classes=classes, ndim=ndim, budget=budget, chunk=chunk, limit=16384)
    assert side % chunk == 0 and side >= chunk
    if side > chunk:
        assert band_bytes(depth, side ** (ndim - 1), classes) <= budget
    if side < 16384:
        assert band_bytes(depth, (side + chunk) ** (ndim - 1), classes) > budget


def test_on_a_gpu_the_band_and_batch_are_on_the_device_and_the_host_holds_little():
    args = {"tile": (512, 512), "block": (8192, 8192), "chunk": 512, "channels": 4, "classes": 8, "params": 10**6}
    gpu = footprint(**args, batch=32, gpu=True, readers=8, pixel_bytes=1)
    cpu = footprint(**args, batch=4, gpu=False, readers=1, pixel_bytes=1)
    assert gpu.band == cpu.band == band_bytes(1024, 8192, 8)
    assert gpu.device > gpu.band and cpu.device == 0 and cpu.host > cpu.band
    assert gpu.host < cpu.host
    assert footprint(**args, batch=4, gpu=False, readers=1, tta=True).host > cpu.host
    assert gpu_batch_size(free=80 * 2**30, tile=(512, 512), channels=4, classes=8, band=gpu.band) == 64
    assert gpu_batch_size(free=2**30, tile=(512, 512), channels=4, classes=8, band=2**29) == 1
