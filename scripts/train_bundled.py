"""Train the models bundled in ``gigaseg/models/bundled/`` (seeded; reruns on a CPU).

    python scripts/train_bundled.py              # both models
    python scripts/train_bundled.py --only 2d    # landcover2d.pt only

2-D: a small U-Net (timm ResNet-18 stem and first two stages, 3-level decoder)
trained on generated 4-band land-cover GeoTIFFs (``gigaseg.io.generate``), read
tile by tile through ``GeoTiffSource``; validated on a scene of its own seed.
3-D: a small MONAI U-Net trained on generated CT-like volumes
(``gigaseg.synthetic.organ_volume``) stored as ``.npy`` and read box by box
through a memory-mapped ``ArraySource``; validated on volumes of their own seeds.
Weights are stored as float16 to keep the files small.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gigaseg.io.array import ArraySource
from gigaseg.io.generate import write_landcover_tiff
from gigaseg.io.geotiff import GeoTiffSource
from gigaseg.models.checkpoint import load_checkpoint, save_checkpoint
from gigaseg.models.training import Pair, TrainConfig, train
from gigaseg.synthetic import CLASSES, COLORS, organ_volume

BUNDLED = Path(__file__).resolve().parents[1] / "gigaseg" / "models" / "bundled"

LANDCOVER = TrainConfig(
    classes=list(CLASSES),
    colors=list(COLORS),
    band_names=["blue", "green", "red", "nir"],
    arch="unet",
    encoder="tu-resnet18",
    arch_kwargs={"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    tile=256,
    overlap=32,
    batch_size=8,
    epochs=12,
    steps=16,
    val_tiles=16,
    lr=3e-3,
    seed=0,
    device="cpu",
    half=True,
)
LANDCOVER_TRAIN_SEEDS = (101, 102, 103)
LANDCOVER_VAL_SEED = 200
LANDCOVER_SHAPE = (1536, 1536)

ORGANS = TrainConfig(
    classes=["background", "organ1", "organ2", "organ3"],
    colors=["#000000", "#e53e3e", "#38a169", "#3182ce"],
    band_names=["ct"],
    arch="unet3d",
    encoder=None,
    arch_kwargs={"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
    clip=[-150.0, 250.0],  # a soft-tissue CT window: the organs differ by 20-110 HU
    tile=32,
    overlap=8,
    batch_size=4,
    epochs=20,
    steps=60,
    val_tiles=16,
    candidates=4,
    lr=4e-3,
    seed=0,
    device="cpu",
    half=True,
)
ORGAN_TRAIN_SEEDS = (1, 2, 3, 4, 5, 6)
ORGAN_VAL_SEEDS = (100, 101)
ORGAN_SHAPE = (80, 80, 80)

DATA = {
    "landcover2d": [
        {
            "generator": "gigaseg.io.generate.write_landcover_tiff",
            "shape": list(LANDCOVER_SHAPE),
            "seed": seed,
            "use": use,
        }
        for seeds, use in ((LANDCOVER_TRAIN_SEEDS, "train"), ((LANDCOVER_VAL_SEED,), "validation"))
        for seed in seeds
    ],
    "organs3d": [
        {"generator": "gigaseg.synthetic.organ_volume", "shape": list(ORGAN_SHAPE), "seed": seed, "use": use}
        for seeds, use in ((ORGAN_TRAIN_SEEDS, "train"), (ORGAN_VAL_SEEDS, "validation"))
        for seed in seeds
    ],
}


def landcover_pairs(work: Path, seeds: tuple[int, ...]) -> list[Pair]:
    pairs = []
    for seed in seeds:
        image = write_landcover_tiff(
            work / f"scene{seed}.tif", LANDCOVER_SHAPE, seed=seed, labels_path=work / f"labels{seed}.tif"
        )
        pairs.append(Pair(GeoTiffSource(image), GeoTiffSource(work / f"labels{seed}.tif")))
    return pairs


def organ_pairs(work: Path, seeds: tuple[int, ...]) -> list[Pair]:
    pairs = []
    for seed in seeds:
        volume, labels = organ_volume(ORGAN_SHAPE, seed=seed)
        np.save(work / f"volume{seed}.npy", volume)
        np.save(work / f"organs{seed}.npy", labels)
        pairs.append(
            Pair(
                ArraySource.from_npy(work / f"volume{seed}.npy", spatial_dims=3, band_names=["ct"]),
                ArraySource.from_npy(work / f"organs{seed}.npy", spatial_dims=3),
            )
        )
    return pairs


def describe_data(out: Path, data: list[dict]) -> None:
    """Replace the temporary file names in the card with how to regenerate the data."""
    model, card = load_checkpoint(out)
    card.training["data"] = data
    save_checkpoint(out, model, card, half=True)


def train_one(name: str, config: TrainConfig, pairs: list[Pair], val_pairs: list[Pair], out: Path) -> None:
    torch.manual_seed(config.seed)
    started, cpu = time.perf_counter(), time.process_time()
    result = train(pairs, out, config, val_pairs=val_pairs, overwrite=True, progress=True, log=print)
    result.last.unlink()
    describe_data(out, DATA[name])
    metrics = result.card.metrics
    print(
        f"{name}: {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - started:.0f} s "
        f"({time.process_time() - cpu:.0f} s of CPU), "
        f"best epoch {metrics['epoch']}: val dice {json.dumps(metrics['val_dice'])}, "
        f"mean {metrics['val_mean_dice']}, receptive field {result.card.receptive_field}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["2d", "3d"])
    parser.add_argument("--out", type=Path, default=BUNDLED)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gigaseg-train-") as tmp:
        work = Path(tmp)
        if args.only in (None, "2d"):
            pairs = landcover_pairs(work, LANDCOVER_TRAIN_SEEDS)
            val = landcover_pairs(work, (LANDCOVER_VAL_SEED,))
            train_one("landcover2d", LANDCOVER, pairs, val, args.out / "landcover2d.pt")
        if args.only in (None, "3d"):
            pairs, val = organ_pairs(work, ORGAN_TRAIN_SEEDS), organ_pairs(work, ORGAN_VAL_SEEDS)
            train_one("organs3d", ORGANS, pairs, val, args.out / "organs3d.pt")


if __name__ == "__main__":
    main()
