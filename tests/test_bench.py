"""A smoke run of the benchmark at tiny sizes, so ``bench/`` does not rot.

The measurements run in this process (``inline``): the numbers mean nothing
here; what is checked is that every case runs and reports its rows. The real
benchmark is ``python -m bench`` (see bench/RESULTS.md), never part of the tests.
"""

import numpy as np
import pytest
import zarr

from bench.cases import CASES, Context, Settings
from bench.run import main, table


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    data = tmp_path_factory.mktemp("bench")
    return Context(Settings(quick=True, repeats=1, threads=1, inline=True, data=data, out=data / "runs"))


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


def test_volume_case_runs_or_says_why(quick):
    rows = CASES[5](quick)
    assert rows[0].value is not None or rows[0].note


def test_unknown_case_is_refused():
    with pytest.raises(SystemExit, match="unknown cases"):
        main(["--cases", "10"])
