"""``gigaseg train``, ``gigaseg models`` and ``segment --card/--tta`` through the CLI."""

import json

import numpy as np
import torch
import zarr

from gigaseg.io.generate import write_landcover_tiff
from gigaseg.io.sources import open_source
from gigaseg.models import ModelCard, create_model, load_checkpoint
from gigaseg.synthetic import landcover_scene
from tests.test_cli import assert_one_line_error, run


def test_models_lists_every_architecture_with_parameters():
    result = run("models")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "dims", "parameters", "about"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert {"fcn", "unet", "deeplabv3", "deeplabv3plus", "unet3d", "aspp3d"} <= set(rows)
    assert rows["unet3d"][1] == "3-D" and rows["unet"][1] == "2-D"
    assert int(rows["conv"][2].replace(",", "")) == 16


def test_train_on_geotiffs_then_segment(tmp_path):
    write_landcover_tiff(tmp_path / "a.tif", (128, 96), seed=1, labels_path=tmp_path / "a_labels.tif")
    write_landcover_tiff(tmp_path / "b.tif", (64, 64), seed=2, labels_path=tmp_path / "b_labels.tif")
    model = tmp_path / "m.pt"
    args = ["train", "--image", tmp_path / "a.tif", "--labels", tmp_path / "a_labels.tif"]
    args += ["--val-image", tmp_path / "b.tif", "--val-labels", tmp_path / "b_labels.tif"]
    args += ["--classes", "water,vegetation,built-up,bare", "--colors", "#00f,#0f0,#f00,#ff0"]
    args += ["--arch", "conv", "--arch-kwargs", '{"kernel_size": 3}', "--tile", 32, "--overlap", 8]
    args += [
        "--epochs",
        2,
        "--steps",
        3,
        "--batch-size",
        2,
        "--val-tiles",
        2,
        "--device",
        "cpu",
        "--out",
        model,
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "epoch 2/2: loss" in result.stdout and "val dice" in result.stdout
    assert f"{model}: best epoch" in result.stdout
    # the best epoch's validation, in gigaseg evaluate's table
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("validation of the best epoch"))
    assert lines[head + 2].split() == ["class", "precision", "recall", "F1", "IoU", "reference", "px"]
    assert [line.split()[0] for line in lines[head + 3 : head + 7]] == ["water", "vegetation", "built-up", "bare"]
    assert lines[head + 7].startswith("macro mean") and "overall accuracy" in lines[head + 9]
    assert "confusion matrix (rows: reference, columns: model):" in result.stdout
    _, card = load_checkpoint(model)
    assert {"val_precision", "val_recall", "val_pixel_accuracy", "val_kappa"} <= set(card.metrics)
    _, card = load_checkpoint(model)
    assert card.colors == ["#00f", "#0f0", "#f00", "#ff0"] and card.receptive_field == 3
    assert (tmp_path / "m.last.pt").exists()
    assert_one_line_error(run(*args), "--overwrite")
    result = run(*args[:-2], "--epochs", 3, "--out", model, "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stdout and "epoch 3/3" in result.stdout

    out = tmp_path / "o.zarr"
    result = run("segment", tmp_path / "a.tif", "--model", model, "--out", out, "--tta", "--tile", 64)
    assert result.exit_code == 0, result.output
    assert zarr.open_group(out, mode="r").attrs["gigaseg"]["plan"]["tta"] is True


def test_train_refuses_bad_options_clearly(tmp_path):
    write_landcover_tiff(tmp_path / "a.tif", (64, 64), seed=1, labels_path=tmp_path / "l.tif")
    base = ["train", "--image", tmp_path / "a.tif", "--out", tmp_path / "m.pt", "--classes", 4]
    assert_one_line_error(run(*base, "--labels", tmp_path / "missing.tif"), "does not exist")
    assert_one_line_error(run(*base, "--labels", tmp_path / "l.tif", "--labels", tmp_path / "l.tif"), "2 label files")
    result = run(*base, "--labels", tmp_path / "l.tif", "--arch-kwargs", "[1]")
    assert result.exit_code == 2 and "must be a JSON object" in result.output
    assert_one_line_error(run(*base, "--labels", tmp_path / "l.tif", "--arch", "nope"), "unknown architecture")


def test_npy_volumes_open_as_memory_mapped_sources(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 5, 6, 7), np.float32))
    np.save(tmp_path / "l.npy", np.zeros((5, 6, 7), np.uint8))
    labels = open_source(tmp_path / "l.npy")
    image = open_source(tmp_path / "v.npy", spatial_dims=3, bands=[2])
    assert labels.shape == image.shape == (5, 6, 7)
    assert labels.channels == 1 and image.channels == 1
    assert isinstance(open_source(tmp_path / "v.npy", spatial_dims=3).array, np.memmap)


def test_segment_a_plain_state_dict_with_a_card_file(tmp_path):
    image, _ = landcover_scene((64, 64), seed=3)
    from tests.conftest import write_tiff

    tif = write_tiff(tmp_path / "s.tif", image)
    card = ModelCard(arch="conv", in_channels=4, classes=["a", "b"], tile=32, overlap=8, mean=[1000.0] * 4)
    torch.save(create_model(card).state_dict(), tmp_path / "plain.pt")
    (tmp_path / "card.json").write_text(json.dumps(card.to_dict()))
    out = tmp_path / "o.zarr"
    assert_one_line_error(run("segment", tif, "--model", tmp_path / "plain.pt", "--out", out), "--card")
    result = run("segment", tif, "--model", tmp_path / "plain.pt", "--out", out, "--card", tmp_path / "card.json")
    assert result.exit_code == 0, result.output
    wrong = {**card.to_dict(), "in_channels": 3, "mean": None}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    result = run(
        "segment",
        tif,
        "--model",
        tmp_path / "plain.pt",
        "--out",
        out,
        "--overwrite",
        "--card",
        tmp_path / "wrong.json",
    )
    assert_one_line_error(result, "do not fit")
    volume = {**card.to_dict(), "arch": "aspp3d", "spatial_dims": 3, "arch_kwargs": {"channels": [4, 8]}}
    (tmp_path / "volume.json").write_text(json.dumps(volume))
    torch.save(create_model(ModelCard.from_dict(volume)).state_dict(), tmp_path / "volume.pt")
    result = run(
        "segment",
        tif,
        "--model",
        tmp_path / "volume.pt",
        "--out",
        out,
        "--overwrite",
        "--card",
        tmp_path / "volume.json",
    )
    assert_one_line_error(result, "is 3-D but")


def test_train_on_sparse_one_based_labels_with_the_sparse_options(tmp_path):
    from tests.conftest import write_tiff

    image, truth = landcover_scene((128, 128), seed=8)
    labels = np.zeros((1, 128, 128), np.uint8)  # 0: unlabelled, classes 1..4
    rng = np.random.default_rng(8)
    for _ in range(30):
        y, x = rng.integers(0, 80, size=2)
        labels[0, y : y + 3, x : x + 3] = truth[y : y + 3, x : x + 3] + 1
    write_tiff(tmp_path / "s.tif", image)
    write_tiff(tmp_path / "l.tif", labels)
    model = tmp_path / "m.pt"
    args = ["train", "--image", tmp_path / "s.tif", "--labels", tmp_path / "l.tif", "--classes", 4, "--out", model]
    args += ["--arch", "conv", "--tile", 32, "--overlap", 8, "--epochs", 1, "--steps", 2, "--batch-size", 2]
    args += ["--val-tiles", 4, "--device", "cpu", "--label-offset", 1]
    assert_one_line_error(run(*args[:-2]), "hold value 4, which is no class index 0..3; mark unlabelled")
    result = run(*args, "--class-weights", "balanced", "--sampling", "balanced")
    assert result.exit_code == 0, result.output
    assert "split (blocks): " in result.stdout and "sampling balanced" in result.stdout
    _, card = load_checkpoint(model)
    assert card.training["class_weights"] == "balanced" and card.training["labels"]["offset"] == 1
    assert sum(card.training["split"]["labelled"]["val"].values()) > 0
    assert_one_line_error(run(*args, "--overwrite", "--class-weights", "1,2"), "2 class weights for 4 classes")
    assert_one_line_error(run(*args, "--overwrite", "--val-block", 128), "lie in 1 block(s) of 128 px")
    assert_one_line_error(
        run(*args, "--overwrite", "--encoder-weights", tmp_path / "l.tif"), "needs a 2-D network with"
    )


def test_train_on_vector_labels_in_another_crs(tmp_path):
    from rasterio.warp import transform as warp

    from tests.conftest import UTM, write_tiff

    image, truth = landcover_scene((96, 96), seed=9)
    write_tiff(tmp_path / "s.tif", image)  # 10 m pixels from (500000, 6000000), UTM 33N
    rng = np.random.default_rng(9)
    features, covered = [], np.zeros((96, 96), bool)
    for _ in range(40):  # 2x2-pixel survey squares, classes 1..4, in longitude/latitude
        row, col = (int(v) for v in rng.integers(0, 94, size=2))
        xs = [500000 + 10 * c for c in (col, col + 2, col + 2, col)]
        ys = [6000000 - 10 * r for r in (row, row, row + 2, row + 2)]
        lon, lat = warp(UTM, "EPSG:4326", xs, ys)
        ring = [[x, y] for x, y in zip(lon + lon[:1], lat + lat[:1], strict=True)]
        value = int(truth[row : row + 2, col : col + 2].max()) + 1
        covered[row : row + 2, col : col + 2] = True
        features.append(
            {"type": "Feature", "properties": {"klass": value}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        )
    (tmp_path / "l.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    model = tmp_path / "m.pt"
    args = ["train", "--image", tmp_path / "s.tif", "--labels", tmp_path / "l.geojson", "--classes", 4]
    args += ["--arch", "conv", "--tile", 32, "--overlap", 8, "--epochs", 1, "--steps", 2, "--batch-size", 2]
    args += ["--device", "cpu", "--label-offset", 1, "--label-attribute", "klass", "--out", model]
    result = run(*args)
    assert result.exit_code == 0, result.output
    _, card = load_checkpoint(model)
    split = card.training["split"]["labelled"]
    total = sum(split["train"].values()) + sum(split["val"].values())
    assert total == covered.sum() and sum(split["val"].values()) > 0  # each square burns its 4 pixels
