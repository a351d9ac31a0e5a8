"""The loopback servers behave as the real ones the cloud tests stand in for."""

from __future__ import annotations

import numpy as np
import rasterio

from tests.conftest import write_tiff


def test_the_range_server_serves_ranges_to_gdal(range_server, tmp_path):
    data = np.arange(3 * 512 * 512, dtype=np.uint16).reshape(3, 512, 512)
    write_tiff(range_server.root / "a.tif", data, compress="deflate")
    with rasterio.open(f"/vsicurl/{range_server.url}/a.tif") as src:
        window = src.read(window=((0, 256), (0, 256)))
    assert np.array_equal(window, data[:, :256, :256])
    size = (range_server.root / "a.tif").stat().st_size
    assert range_server.served.gets and range_server.served.bytes < size  # ranges, not the whole file


def test_the_s3_server_serves_gdal_and_s3fs(s3, tmp_path):
    import s3fs

    data = np.arange(2 * 300 * 300, dtype=np.uint8).reshape(2, 300, 300)
    local = write_tiff(tmp_path / "b.tif", data)
    fs = s3fs.S3FileSystem()
    fs.put(str(local), f"{s3}/scenes/b.tif")
    with rasterio.open(f"{s3}/scenes/b.tif") as src:  # rasterio maps s3:// to GDAL's /vsis3/
        assert np.array_equal(src.read(), data)
    with fs.open(f"{s3}/lock", "xb") as f:
        f.write(b"one")
    try:
        with fs.open(f"{s3}/lock", "xb") as f:
            f.write(b"two")
        raise AssertionError("a conditional create over an existing key succeeded")
    except FileExistsError:
        pass
    assert fs.cat(f"{s3}/lock") == b"one"
