"""Case 16: a COG on object storage -> a store on object storage, against local files.

Both servers run on loopback in child processes (moto's S3 server, and the
Range-honouring HTTP server of the test suite), so the ratio measures gigaseg's
I/O path, not a network. Targets (issue 17): S3 -> S3 at >= 0.8 of the
local-file throughput with the same model and scene, and bytes fetched over
HTTP <= 1.2 x the compressed size of the internal tiles the scene's blocks touch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rasterio

from bench.cases import Context, Row

ROOT = Path(__file__).parents[1]


@contextlib.contextmanager
def servers(www: Path) -> Iterator[dict[str, Any]]:
    """moto's S3 server and the range server on loopback; the S3 environment set while they run."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import S3_ENV, _wait_for, free_port

    s3_port, http_port = free_port(), free_port()
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    log, control = www.parent / "range.log", www.parent / "range.json"
    code = f"from tests.servers import serve; serve({str(www)!r}, {http_port}, {str(log)!r}, {str(control)!r})"
    processes = [
        subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(s3_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT),
    ]
    saved = dict(os.environ)
    try:
        assert _wait_for(s3_port, 60) and _wait_for(http_port, 60), "a loopback server did not start"
        endpoint = f"http://127.0.0.1:{s3_port}"
        os.environ.update({**S3_ENV, "AWS_S3_ENDPOINT": endpoint.removeprefix("http://"), "AWS_ENDPOINT_URL": endpoint})
        yield {"s3": endpoint, "http": f"http://127.0.0.1:{http_port}", "log": log}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for process in processes:
            process.terminate()
            process.wait(20)


def tile_bytes(path: str) -> int:
    """The compressed bytes of every internal tile of band 1 (all bands, pixel-interleaved), from GDAL."""
    with rasterio.open(path) as src:
        rows = -(-src.height // src.block_shapes[0][0])
        cols = -(-src.width // src.block_shapes[0][1])
        bands = src.count if src.interleaving is not None and src.interleaving.name.lower() == "band" else 1
        return sum(
            int(src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=b + 1) or 0)
            for b in range(bands)
            for r in range(rows)
            for c in range(cols)
        )


def cloud(ctx: Context) -> list[Row]:
    """Local file -> local store against S3 COG -> S3 store, interleaved, with the 1x1-convolution
    model (I/O-bound: the worst case for object storage) and the U-Net; bytes fetched over HTTP."""
    import boto3
    import s3fs

    from gigaseg import SegmentOptions, segment

    www = Path(ctx.output("c11-www"))
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    options = SegmentOptions(overwrite=True, batch_size=ctx.settings.batch_size)
    rows: list[Row] = []
    with servers(www) as at:
        boto3.client("s3", endpoint_url=at["s3"]).create_bucket(Bucket="bench")
        s3fs.S3FileSystem.clear_instance_cache()
        for name, side in (("conv", ctx.settings.side(4096, 1024)), ("unet", ctx.settings.side(2048, 512))):
            scene, model = ctx.scene(side), ctx.model(name)
            s3fs.S3FileSystem().put(str(scene), f"bench/scene_{side}.tif")
            runs = {
                "local": (str(scene), ctx.output(f"c11-{name}.zarr")),
                "s3": (f"s3://bench/scene_{side}.tif", f"s3://bench/{name}.zarr"),
            }
            seconds: dict[str, list[float]] = {"local": [], "s3": []}
            for _ in range(ctx.settings.repeats):
                for where, (source, out) in runs.items():
                    started = time.perf_counter()
                    segment(source, model, out, options)
                    seconds[where].append(time.perf_counter() - started)
            rows += _speed(name, side, seconds)
        scene = ctx.scene(ctx.settings.side(4096, 1024))
        shutil.copy(scene, www / "scene.tif")
        at["log"].write_text("")
        segment(f"{at['http']}/scene.tif", ctx.model("conv"), ctx.output("c11-http.zarr"), options)
        lines = [line for line in at["log"].read_text().splitlines() if line]
    fetched = sum(int(line.rsplit(",", 1)[1].strip(" ]")) for line in lines)
    needed = tile_bytes(str(scene))
    note = f"{len(lines)} GETs, {fetched / 2**20:.1f} MiB fetched, tiles {needed / 2**20:.1f} MiB"
    ratio = fetched / needed
    return [
        *rows,
        Row("16", "HTTP bytes fetched / compressed tile bytes", ratio, target="<= 1.2", met=ratio <= 1.2, note=note),
    ]


def _speed(model: str, side: int, seconds: dict[str, list[float]]) -> list[Row]:
    local, s3 = min(seconds["local"]), min(seconds["s3"])
    mpix, runs = side * side / 1e6, len(seconds["local"])
    return [
        Row(
            "16",
            f"{model}: local file -> local store, {side}^2",
            mpix / local,
            "Mpix/s",
            note=f"{local:.2f} s best of {runs}",
        ),
        Row("16", f"{model}: S3 COG -> S3 store, {side}^2", mpix / s3, "Mpix/s", note=f"{s3:.2f} s best of {runs}"),
        Row("16", f"{model}: S3 / local throughput", local / s3, target=">= 0.8", met=local / s3 >= 0.8),
    ]
