"""Fold ensembles: several weight files of one network, averaged as probabilities in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import gigaseg
from gigaseg.errors import ModelError
from gigaseg.jobs.runner import run_job
from gigaseg.models.ensemble import Ensemble
from gigaseg.models.formats import open_model
from gigaseg.models.registry import create_model

from .conftest import one_error, run, write_tiff

CARD = {"arch": "conv", "in_channels": 3, "classes": list("abcd"), "tile": 32, "overlap": 4}
CARD["normalize"] = [{"divide": 100}]


def folds(tmp_path, n=3):
    """``n`` state dicts of one pointwise network, each seeded differently."""
    card = gigaseg.ModelCard.from_dict(CARD)
    names = []
    for i in range(n):
        torch.manual_seed(i)
        model = create_model(card)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3)
        torch.save(model.state_dict(), tmp_path / f"fold_{i}.pt")
        names.append(f"fold_{i}.pt")
    return names


def test_folds_are_averaged_as_probabilities(tmp_path):
    names = folds(tmp_path)
    data = np.random.default_rng(0).integers(0, 200, (3, 70, 90)).astype(np.uint8)
    tif = write_tiff(tmp_path / "s.tif", data)
    options = gigaseg.SegmentOptions(probabilities="float32")
    gigaseg.segment(tif, tmp_path / names[0], tmp_path / "e.zarr", options, card={**CARD, "folds": names})
    loaded = open_model(tmp_path / names[0], card={**CARD, "folds": names})
    assert isinstance(loaded.module, Ensemble) and loaded.card.outputs == "probabilities"
    x = torch.from_numpy(data.astype(np.float32) / 100)[None]
    expected = []
    for name in names:
        single = open_model(tmp_path / name, card=CARD).module
        with torch.no_grad():
            expected.append(torch.softmax(single(x), 1))
    mean = torch.stack(expected).mean(0)[0].numpy()
    got = zarr.open_group(str(tmp_path / "e.zarr"))["probabilities"][:]
    np.testing.assert_allclose(got, mean, atol=1e-5)
    assert not np.array_equal(mean.argmax(0), expected[0][0].numpy().argmax(0))  # the ensemble is not fold 0


def test_a_missing_fold_is_one_line_and_nothing_is_created(tmp_path):
    names = folds(tmp_path, 2)
    tif = write_tiff(tmp_path / "s.tif", np.zeros((3, 40, 50), np.uint8))
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "folds": [*names, "fold_7.pt"]}))
    result = run(
        "segment", tif, "--model", tmp_path / names[0], "--card", tmp_path / "card.json", "--out", tmp_path / "o.zarr"
    )
    one_error(result, "fold fold_7.pt of", "is missing")
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(ModelError, match="folds must be a list of weight files"):
        open_model(tmp_path / names[0], card={**CARD, "folds": []})


def job_with_folds(tmp_path):
    """A job file of one scene whose card names two folds beside the model file."""
    names = folds(tmp_path, 2)
    write_tiff(tmp_path / "s.tif", np.zeros((3, 40, 50), np.uint8))
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "folds": names}))
    job = tmp_path / "job.yaml"
    job.write_text(
        f"inputs: [s.tif]\nmodel: {names[0]}\ncard: card.json\noutput: {{dir: out}}\ncluster: {{workers: 1}}\n"
    )
    return job


def test_a_batch_job_refuses_folds_its_workers_would_not_get(tmp_path):
    job = job_with_folds(tmp_path)
    report = run_job(job)
    assert report.scenes[0].status == "failed"
    assert "which a cluster's workers do not get" in report.scenes[0].error


def test_a_changed_fold_file_is_a_changed_model_for_resume(tmp_path):
    names = folds(tmp_path, 2)
    tif = write_tiff(tmp_path / "s.tif", np.zeros((3, 40, 50), np.uint8))
    card = {**CARD, "folds": names}
    gigaseg.segment(tif, tmp_path / names[0], tmp_path / "o.zarr", card=card)
    torch.save(torch.load(tmp_path / names[0]), tmp_path / names[1])  # fold 1 replaced by fold 0's weights
    with pytest.raises(gigaseg.InputError, match="weights.folds.fold_1.pt"):
        gigaseg.segment(tif, tmp_path / names[0], tmp_path / "o.zarr", gigaseg.SegmentOptions(resume=True), card=card)


def test_folds_on_a_format_that_does_not_read_them_are_refused(tmp_path):
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 1)), str(model))
    with pytest.raises(ModelError, match="export one file per fold"):
        open_model(model, card={**CARD, "arch": "torchscript", "folds": ["a.ts", "b.ts"]})


def test_a_job_dry_run_lists_folds_its_workers_would_not_get_as_failing(tmp_path):
    job = job_with_folds(tmp_path)
    result = run("run", job, "--dry-run")
    assert result.exit_code == 2 and "FAILS" in result.output and "do not get" in result.output


def test_two_workers_shipping_one_model_folder_at_once_both_end_with_it(tmp_path, monkeypatch):
    """A worker that looked before another finished finds the folder at its rename: its own copy goes."""
    from gigaseg.jobs.runner import ShipModels, shipped_model

    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    target = Path(shipped_model("abc"))
    (target / "fold_0").mkdir(parents=True)
    (target / "plans.json").write_bytes(b"{}")  # the other worker's copy, complete
    real_exists, looked = Path.exists, []

    def late(path):  # the first look happens before the other worker's rename
        if path == target and not looked:
            looked.append(path)
            return False
        return real_exists(path)

    monkeypatch.setattr(Path, "exists", late)
    ShipModels({"abc": {"fold_0/w.pt": b"1", "plans.json": b"{}"}}).setup(None)
    assert looked and (target / "plans.json").read_bytes() == b"{}"
    assert [p.name for p in target.parent.iterdir()] == ["abc"]  # no partial left


def test_a_fold_named_twice_is_refused(tmp_path):
    names = folds(tmp_path, 2)
    with pytest.raises(ModelError, match="folds names one twice"):
        open_model(tmp_path / names[0], card={**CARD, "folds": [names[0], names[0]]})


def test_the_card_beside_a_model_folder_given_as_dot_is_named_after_the_folder(tmp_path, monkeypatch):
    from gigaseg.models.formats import sidecar

    monkeypatch.chdir(tmp_path)
    assert sidecar(".") == f"{tmp_path}.card.json"
    assert sidecar("s3://bucket/model/") == "s3://bucket/model.card.json"
