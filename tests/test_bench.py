"""A smoke run of the benchmark at tiny sizes, so ``bench/`` does not rot, and a check of
the recorded runs against their targets.

The measurements run in this process (``inline``): the numbers mean nothing
here; what is checked is that every case runs and measures every row (an engine
that fails leaves its row without a value, whatever its note says), and that
each row's ``met`` is what its value and target say. The real benchmark is
``python -m bench`` (see bench/RESULTS.md), never part of the tests; the runs it
recorded in the repository (``bench/gpu-runs/*/gpu-bench.json``) are checked
here: a row that misses its target fails unless ``ACCEPTED_MISSES`` names it
with its reason.
"""

import json
import operator
import re
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zarr

from bench.cases import CASES, Context, Row, Settings
from bench.run import main, table

BENCH = Path(__file__).resolve().parent.parent / "bench"

# Recorded rows that miss their target, each with why the miss is accepted for now:
# (run folder under bench/gpu-runs, case, row name) -> reason. Every entry must name a
# recorded miss (a row that now meets its target is taken out), its case must be
# reported as not met (**no**) in bench/RESULTS.md, and a run must meet some targets.
_HOST_BOUND = (
    "issue 14: on the H200 the GPU waits on the host's per-tile work (adds, batch fills, "
    "kernel launches; bench/RESULTS.md, 'GPU: one NVIDIA H200'); the strided row path "
    "since 9d50c94 is not yet measured on a GPU"
)
ACCEPTED_MISSES = {
    (run, "11", name): _HOST_BOUND
    for run in ("2026-11-30-run1", "2026-11-30-run2")
    for name in (
        "bundled U-Net: segment / forward",
        "bundled U-Net: GeoTIFF -> Zarr",
        "smp U-Net resnet34, 8 classes: segment / forward",
    )
}

_TARGET = re.compile(r"\s*(>=|<=|<|>)?\s*(-?\d+(?:\.\d+)?)")
_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt, None: operator.eq}


def meets(row: Row) -> bool | None:
    """Whether the row's value meets its target as the target's text reads (``>= 0.9``,
    ``<= 1536 MiB``, ``1 (yes)``); None for no target, ``(info)``, or no value."""
    found = _TARGET.match(row.target)
    if not found or row.value is None:
        return None
    return _COMPARE[found.group(1)](row.value, float(found.group(2)))


def judged(row: Row) -> bool:
    """Whether the row has a target to meet (not empty, not ``(info)``)."""
    return bool(row.target) and not row.target.startswith("(info)")


def assert_measured(rows: list[Row]) -> None:
    """Every row has a value (an engine error leaves none), and ``met``, where the case
    judges it, agrees with the value and the target."""
    assert rows, "no rows"
    assert all(r.value is not None and np.isfinite(r.value) for r in rows), table(rows)
    assert all(r.met is None or r.met == meets(r) for r in rows), table(rows)


def recorded_runs(folder: Path = BENCH / "gpu-runs") -> dict[str, list[Row]]:
    """The rows of each recorded run (``<run>/gpu-bench.json``), by run folder name."""
    names = {f.name for f in fields(Row)}
    return {
        path.parent.name: [
            Row(**{k: v for k, v in r.items() if k in names}) for r in json.loads(path.read_text())["rows"]
        ]
        for path in sorted(folder.glob("*/gpu-bench.json"))
    }


def unaccepted_misses(runs: dict[str, list[Row]], accepted: dict[tuple[str, str, str], str]) -> list[str]:
    """What is wrong with the recorded rows: a target missed (or never measured) and not
    accepted, a ``met`` that contradicts the value, a target that cannot be read."""
    wrong = []
    for run, rows in runs.items():
        for r in rows:
            where = f"{run}, case {r.case}, {r.name!r} ({r.value} against {r.target!r})"
            if not judged(r):
                continue
            ok = meets(r)
            if ok is None and r.value is not None:
                wrong.append(f"{where}: the target cannot be read")
            elif r.met is not None and ok is not None and r.met != ok:
                wrong.append(f"{where}: recorded met={r.met}, the value says {ok}")
            elif not ok and not accepted.get((run, r.case, r.name), "").strip():
                wrong.append(f"{where}: misses its target and is not an accepted miss")
    return wrong


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench")
    return Context(Settings(quick=True, repeats=1, threads=1, inline=True, data=data, out=data / "runs"))


@pytest.mark.slow
def test_pipeline_efficiency_and_peers_report_ratios(quick):
    rows = CASES[1](quick) + CASES[2](quick)
    ratios = {r.name: r.value for r in rows if "/" in r.name}
    assert set(ratios) == {
        "unet 512^2: segment / forward",
        "unet 384^2: segment / forward",
        "conv 384^2: segment / forward",
        *(f"{m}: gigaseg / {p}" for m in ("conv", "unet") for p in ("monai", "pytorch-toolbelt", "tiler")),
    }
    assert all(v is not None and v > 0 for v in ratios.values()), table(rows)
    assert_measured(rows)


def test_peers_and_gigaseg_agree_on_the_mask(quick):
    """Same model, tiles and gaussian blending: gigaseg's mask is MONAI's, nearly everywhere."""
    from bench import engines

    scene, model = quick.scene(384), quick.model("unet")
    out = quick.output("agree.zarr")
    engines.gigaseg(input=scene, model=model, out=out, batch_size=4)
    ours = zarr.open_group(out, mode="r")["mask"][:]
    theirs = engines.monai_mask(input=scene, model=model, batch_size=4)
    assert ours.shape == theirs.shape
    assert np.mean(ours == theirs) > 0.99


def test_gigaseg_and_monai_agree_on_a_volume(quick):
    """The 3-D case compares like with like: MONAI's network sees the volume in
    nibabel's (i, j, k) order, as gigaseg's does, and the masks agree."""
    from bench import engines, inputs
    from bench.cases import volume_arch

    arch, kwargs = volume_arch()
    volume = str(inputs.volume((48, 48, 40), data=quick.settings.data))
    model = str(inputs.model3d(arch, kwargs, tile=32, overlap=8, data=quick.settings.data))
    out = quick.output("agree3d.zarr")
    engines.gigaseg(input=volume, model=model, out=out, batch_size=2)
    ours = zarr.open_group(out, mode="r")["mask"][:]  # (z, y, x)
    theirs = engines.monai_mask(input=volume, model=model, batch_size=2)  # (i, j, k)
    assert theirs.shape == (48, 48, 40)
    # 99.1 % here: the two gaussian windows differ a little, so near-ties go either way.
    # A network shown the volume in another axis order would disagree far more.
    assert np.mean(ours.transpose(2, 1, 0) == theirs) > 0.98


def test_halo_case_meets_its_target(quick):
    rows = CASES[4](quick)
    assert all(r.met for r in rows), table(rows)
    assert_measured(rows)


def test_volume_case_measures_both_engines(quick):
    """This checkout reads NIfTI and has a 3-D U-Net, so the case must run, not say why
    it cannot; and both engines must finish (every row of an engine error has a note)."""
    from bench.cases import volume_support

    assert volume_support() is None
    rows = CASES[5](quick)
    assert [r.name for r in rows][-2:] == ["3-D: gigaseg / MONAI throughput", "3-D: peak RSS gigaseg / MONAI"]
    assert len(rows) == 4, table(rows)
    assert_measured(rows)


def test_recorded_runs_meet_their_targets_or_are_accepted_misses():
    runs = recorded_runs()
    assert runs, "no recorded runs under bench/gpu-runs"
    assert unaccepted_misses(runs, ACCEPTED_MISSES) == []
    missed = {(run, r.case, r.name) for run, rows in runs.items() for r in rows if judged(r) and not meets(r)}
    assert set(ACCEPTED_MISSES) <= missed, f"accepted but not missed: {sorted(set(ACCEPTED_MISSES) - missed)}"
    for run, rows in runs.items():  # the escape is not for every row: each run meets some target
        assert any(judged(r) and meets(r) for r in rows), run
    report = (BENCH / "RESULTS.md").read_text()
    for case in {case for _, case, _ in ACCEPTED_MISSES}:
        assert re.search(rf"^\| {case} \|.*\| \*\*no\*\* \|$", report, re.M), f"case {case}'s miss is not in RESULTS.md"


def test_a_recorded_miss_fails_unless_accepted(tmp_path):
    """The check above on a copy of a recorded run, one row made to miss its target."""
    shutil.copytree(BENCH / "gpu-runs" / "2026-11-30-run2", tmp_path / "run")
    path = tmp_path / "run" / "gpu-bench.json"
    record = json.loads(path.read_text())
    row = next(r for r in record["rows"] if r["name"] == "bundled U-Net: peak GPU memory / dry-run estimate")
    row["value"] = 1.3  # over the dry run's estimate: target <= 1.0
    path.write_text(json.dumps(record))
    runs = recorded_runs(tmp_path)
    accepted = {("run", case, name): why for (_, case, name), why in ACCEPTED_MISSES.items()}
    (contradicts,) = unaccepted_misses(runs, accepted)
    assert "recorded met=True, the value says False" in contradicts
    row["met"] = False
    path.write_text(json.dumps(record))
    (missed,) = unaccepted_misses(recorded_runs(tmp_path), accepted)
    assert "peak GPU memory" in missed and "not an accepted miss" in missed
    accepted["run", "11", row["name"]] = ""  # an escape needs its reason
    assert len(unaccepted_misses(recorded_runs(tmp_path), accepted)) == 1
    accepted["run", "11", row["name"]] = "a reason"
    assert unaccepted_misses(recorded_runs(tmp_path), accepted) == []


def test_sparse_label_case_compares_with_the_forest_on_both_labellings(quick):
    """Case 10 at tiny sizes (two training steps): every row has a value; targets are judged at full size only."""
    rows = CASES[10](quick)
    assert [r.name for r in rows[:4]] == [
        "points: gigaseg held-out accuracy",
        "points: random forest held-out accuracy",
        "points: gigaseg / forest accuracy",
        "points: gigaseg training time (CPU)",
    ]
    assert [r.name.split(":")[0] for r in rows] == ["points"] * 4 + ["polygons"] * 4
    assert all(r.value is not None and r.met is None for r in rows), table(rows)
    assert all(0 <= r.value <= 1 for r in rows if "held-out accuracy" in r.name)


def test_sparse_labels_are_points_or_a_few_polygons_per_class_in_the_training_rows():
    from bench.training import CLASSES, points, polygons, scene

    _, truth = scene(3, 96)
    for labels in (points(truth, 67, 3), polygons(truth, 67, 3, side=5, per_class=2)):
        labelled = labels > 0
        assert not labelled[67:].any() and 0.003 < labelled.mean() < 0.03
        np.testing.assert_array_equal(labels[labelled], truth[labelled] + 1)
    counts = np.bincount(polygons(truth, 67, 3, side=5, per_class=2).ravel(), minlength=CLASSES + 1)[1:]
    present = np.unique(truth[2:65, 2:94])
    assert (counts[present] > 0).all() and (counts <= 2 * 25).all()


def test_unknown_case_is_refused():
    with pytest.raises(SystemExit, match="unknown cases"):
        main(["--cases", "99"])


@pytest.mark.slow
def test_object_storage_case_measures_both_models_and_the_bytes_fetched(quick, s3_server, seaweedfs_server):
    """Case 16 at tiny sizes against the loopback servers: every speed has a value on each S3 server,
    and reads fetch only the scene's tiles (that ratio holds at any size; the speed targets are
    judged at full size)."""
    from tests.conftest import require
    from tests.servers import NOT_STARTED

    require(s3_server is not None, "moto's S3 server did not start")
    require(seaweedfs_server is not None, f"SeaweedFS did not start: {NOT_STARTED.get('SeaweedFS', '')}")
    rows = CASES[16](quick)
    names = [r.name for r in rows]
    assert [n.split(":")[0] for n in names[:12]] == (["conv"] * 3 + ["unet"] * 3) * 2, names
    assert ["seaweedfs" in n for n in names[:12]] == [False, True, True] * 2 + [False] * 6, names
    assert ["moto" in n for n in names[:12]] == [False] * 6 + [False, True, True] * 2, names
    assert all(r.value is not None and r.value > 0 for r in rows), table(rows)
    fetched = rows[-1]
    assert fetched.name == "HTTP bytes fetched / compressed tile bytes" and 0.9 <= fetched.value <= 1.2, table(rows)
