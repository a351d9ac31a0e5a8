"""Progress bars: they move within a block, count from any thread, and print only on a terminal."""

from __future__ import annotations

import io
import math
import threading
from dataclasses import replace

import pytest

from gigaseg.jobs import progress as progress_module
from gigaseg.jobs.options import SegmentOptions
from gigaseg.jobs.progress import Progress
from gigaseg.jobs.segment import segment
from gigaseg.refine import RefineOptions
from gigaseg.refine.synthetic import shapes_image, shapes_labels
from tests.conftest import write_tiff


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def bars(monkeypatch) -> list[Progress]:
    """Every :class:`Progress` made meanwhile, wherever it is made."""
    made: list[Progress] = []
    init = Progress.__init__

    def record(self, *args, **kw):
        init(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(Progress, "__init__", record)
    return made


def only(bars: list[Progress], desc: str) -> Progress:
    found = [b for b in bars if b.desc == desc]
    assert len(found) == 1, [b.desc for b in bars]
    return found[0]


def test_shows_rate_and_count_on_a_terminal_only():
    terminal = Terminal()
    with Progress(10_000_000, desc="segment", enabled=True, file=terminal) as bar:
        bar.advance(4_000_000)
        bar.note("scenes 1/2", refresh=True)
    assert bar.shown and "segment" in terminal.getvalue() and "pix/s" in terminal.getvalue()
    assert "scenes 1/2" in terminal.getvalue()

    plain = io.StringIO()  # a log file or a pipe
    with Progress(100, desc="segment", enabled=True, file=plain) as bar:
        bar.advance(60)
        bar.note("x", refresh=True)
    assert not bar.shown and plain.getvalue() == "" and bar.done == 60

    with Progress(100, desc="segment", enabled=False, file=Terminal()) as bar:  # not asked for
        assert not bar.shown


def test_advance_is_thread_safe():
    bar = Progress(8 * 1000 * 7, desc="t", initial=5)

    def work():
        for _ in range(1000):
            bar.advance(7)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.done == 8 * 1000 * 7 + 5 and bar.updates == 8000


def test_a_one_block_scene_moves_row_by_row_and_prints_nothing_off_a_terminal(
    tmp_path, make_tiff, pointwise_model, bars, capfd
):
    tif = make_tiff((3, 300, 400))
    summary = segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(progress=True))
    assert summary.blocks == 1  # and one chunk row: the labels are written in one go at the end
    bar = only(bars, "segment")
    assert bar.updates > 1  # per tile row, not once per block
    assert bar.done == bar.total == 300 * 400
    assert not bar.shown
    out, err = capfd.readouterr()
    assert err == ""


def test_a_resumed_run_counts_earlier_blocks_as_done(tmp_path, make_tiff, pointwise_model, bars):
    import zarr

    tif = make_tiff((3, 300, 400))
    options = SegmentOptions(block=128, chunk=64)
    segment(tif, pointwise_model, tmp_path / "o.zarr", options)
    done = zarr.open_group(str(tmp_path / "o.zarr"), mode="r+", use_consolidated=False)["blocks_done"]
    done[-1, -1] = 0  # the last block runs again
    bars.clear()
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(block=128, chunk=64, resume=True, progress=True))
    bar = only(bars, "segment")
    assert bar.total == 300 * 400 and bar.done == bar.total
    assert 0 < bar.total - bar.initial < bar.total / done.size * 2  # only that block was left


def test_export_advances_per_chunk_row_and_prints_nothing_off_a_terminal(
    tmp_path, make_tiff, pointwise_model, bars, capfd
):
    from gigaseg.io.export import export_mask

    tif = make_tiff((3, 300, 400))
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(chunk=64))
    export_mask(tmp_path / "o.zarr", tmp_path / "o.tif", progress=True)
    bar = only(bars, "export")
    assert bar.updates == math.ceil(300 / 64) and bar.done == bar.total == 300 * 400
    assert not bar.shown
    assert capfd.readouterr().err == ""


def test_refine_advances_per_refined_block_and_prints_nothing_off_a_terminal(tmp_path, pointwise_model, bars, capfd):
    from gigaseg.jobs.refine import refine as run_refine

    truth = shapes_labels((160, 200), classes=3, seed=5)
    tif = write_tiff(tmp_path / "s.tif", shapes_image(truth, classes=3, seed=5))
    crf = RefineOptions(params={"sxy": 12.0, "srgb": 10.0, "iterations": 2}, block=64, workers=1)
    # segment --refine: blocks refined while segment still runs count at the refine bar's start
    segment(tif, pointwise_model, tmp_path / "o.zarr", SegmentOptions(chunk=32, refine=crf, progress=True))
    bar = only(bars, "refine")
    assert bar.done == bar.total == 160 * 200
    assert only(bars, "segment").updates > 1
    # refine on its own: every block is submitted as the bar starts, and each moves it
    bars.clear()
    run_refine(tmp_path / "o.zarr", tif, replace(crf, progress=True))
    bar = only(bars, "refine")
    assert bar.updates > 1 and bar.done == bar.total == 160 * 200
    assert capfd.readouterr().err == ""


def test_volumes_count_voxels():
    assert progress_module.unit_of(3) == "vox" and progress_module.unit_of(2) == "pix"


def test_a_volume_moves_slab_by_slab_in_voxels(tmp_path, bars):
    from tests.conftest import conv3d_checkpoint, organ_nifti

    path = organ_nifti(tmp_path / "ct.nii", shape=(37, 29, 23))
    model = conv3d_checkpoint(tmp_path / "m.pt", tile=16, overlap=6, arch_kwargs={"kernel_size": 3, "layers": 2})
    summary = segment(path, model, tmp_path / "o.zarr", SegmentOptions(progress=True))
    assert summary.blocks == 1
    bar = only(bars, "segment")
    assert bar.updates > 1 and bar.done == bar.total == 37 * 29 * 23
