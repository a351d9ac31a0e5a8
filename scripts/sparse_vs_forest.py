"""Sparse labels: gigaseg against a per-pixel random forest, spatially held out (issue 18).

    python scripts/sparse_vs_forest.py [SEED] ['[{"tile": 128, ...}]']

A generated 7-class, 6-band 384 x 384 scene (warped Voronoi fields, per-pixel
noise overlapping the class spectra); labels 1..7 in 5 x 5 survey squares
covering ~1% of the top 70% of the rows (0: unlabelled). Both models learn from
those labels only; both are scored on every pixel of the bottom 30%. The JSON
list gives TrainConfig settings to try (default: the README's sparse settings).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

from gigaseg.io.array import ArraySource
from gigaseg.models import Predictor, load_checkpoint
from gigaseg.models.training import Pair, TrainConfig, train

CLASSES, BANDS, SIDE, TRAIN_ROWS = 7, 6, 384, 268
SPARSE = {
    "arch": "unet",
    "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "tile": 128,
    "epochs": 8,
    "steps": 25,
}


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = 90
    centres = rng.uniform(0, SIDE, size=(cells, 2))
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    warp = ndimage.gaussian_filter(rng.normal(size=(2, SIDE, SIDE)), (0, 12, 12)) * 60
    distance = (yy[None] + warp[0] - centres[:, 0, None, None]) ** 2 + (
        xx[None] + warp[1] - centres[:, 1, None, None]
    ) ** 2
    cell = distance.argmin(0)
    labels = rng.integers(0, CLASSES, size=cells)[cell]
    means = np.random.default_rng(0).normal(size=(CLASSES, BANDS)) * 0.6
    offset = rng.normal(size=(cells, BANDS)) * 0.25
    texture = ndimage.gaussian_filter(rng.normal(size=(BANDS, SIDE, SIDE)), (0, 2, 2)) * 2.0
    noise = rng.normal(size=(BANDS, SIDE, SIDE)) * 0.7
    image = means[labels].transpose(2, 0, 1) + offset[cell].transpose(2, 0, 1) + texture + noise
    return (image * 1000 + 5000).astype(np.float32), labels


def survey(truth: np.ndarray, seed: int, *, share: float = 0.012) -> np.ndarray:
    """1-based labels in 5 x 5 squares over ``share`` of the training rows; 0 elsewhere."""
    rng = np.random.default_rng(seed + 1)
    labels = np.zeros(truth.shape, np.uint8)
    while (labels[:TRAIN_ROWS] > 0).mean() < share:
        y, x = rng.integers(0, TRAIN_ROWS - 5), rng.integers(0, SIDE - 5)
        labels[y : y + 5, x : x + 5] = truth[y : y + 5, x : x + 5] + 1
    return labels


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    settings = json.loads(sys.argv[2]) if len(sys.argv) > 2 else [SPARSE]
    image, truth = scene(seed)
    labels = survey(truth, seed)
    held_out = np.zeros(truth.shape, bool)
    held_out[TRAIN_ROWS:] = True
    print(f"labelled: {(labels > 0).mean():.2%} of the scene, classes {np.unique(labels[labels > 0]).tolist()}")
    pixels = image.reshape(BANDS, -1).T
    known = labels.ravel() > 0
    forest = RandomForestClassifier(200, n_jobs=2, random_state=0).fit(pixels[known], labels.ravel()[known] - 1)
    forest_accuracy = (forest.predict(pixels[held_out.ravel()]) == truth[held_out]).mean()
    print(f"random forest: held-out accuracy {forest_accuracy:.3f}")
    pair = Pair(ArraySource(image[:, :TRAIN_ROWS], spatial_dims=2), ArraySource(labels[:TRAIN_ROWS], spatial_dims=2))
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "m.pt"
        for extra in settings:
            config = TrainConfig(
                classes=[f"c{i}" for i in range(1, CLASSES + 1)], label_offset=1, device="cpu", **extra
            )
            started = time.perf_counter()
            train([pair], out, config, overwrite=True, log=print)
            model, card = load_checkpoint(out)
            scores = Predictor(model, card, device="cpu", batch_size=1)(card.normalize(image[None].copy()))[0]
            accuracy = (scores.argmax(0)[held_out] == truth[held_out]).mean()
            print(
                f"gigaseg {json.dumps(extra)}: held-out accuracy {accuracy:.3f} (best epoch {card.metrics['epoch']}, "
                f"{time.perf_counter() - started:.0f} s); random forest {forest_accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
