"""Case 10: training on sparse labels, gigaseg against a per-pixel random forest (issue 18).

Generated 7-class, 6-band scenes (:func:`scene`: warped Voronoi fields, per-pixel
noise overlapping the class spectra), labelled in the top 70% of the rows only,
two ways (:data:`LABELLINGS`): sparse points (single pixels, 1% of those rows)
or a few polygons per class (squares clipped to the field under their centre,
as a photo-interpreter outlines a homogeneous patch). ``gigaseg train`` with the
README's sparse-label settings (:data:`SPARSE`) and a per-pixel random forest
(scikit-learn, 200 trees, the pixels' band values) learn from the same labelled
pixels; both are scored on every pixel of the bottom 30% of the rows, which
neither saw. Targets: gigaseg at least as accurate as the forest, one training
run under 10 minutes on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bench.cases import Context, Row
from gigaseg.io.array import ArraySource
from gigaseg.models import Predictor, load_checkpoint
from gigaseg.models.training import Pair, TrainConfig, train

CLASSES, BANDS = 7, 6
TRAIN_SHARE = 0.7  # of the rows, from the top; the rest is held out
# The README's recommended settings for sparse labels ("Training", "Sparse labels").
SPARSE: dict[str, Any] = {
    "arch": "unet",
    "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "tile": 128,
    "epochs": 8,
    "steps": 25,
}


@dataclass(frozen=True)
class Sizes:
    """How big the scenes, how many, and what each model gets."""

    side: int
    seeds: tuple[int, ...]
    trees: int
    polygon: int  # side of a polygon's square
    polygons: int  # per class
    train: dict[str, Any]  # TrainConfig settings over SPARSE


FULL = Sizes(side=384, seeds=(3, 4, 5), trees=200, polygon=9, polygons=4, train={})
QUICK = Sizes(
    side=96,
    seeds=(3,),
    trees=20,
    polygon=5,
    polygons=1,
    train={"tile": 32, "overlap": 8, "epochs": 1, "steps": 2, "batch_size": 2, "val_tiles": 4},
)


def scene(seed: int, side: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """A float32 ``(BANDS, side, side)`` image and its class indices ``0..CLASSES - 1``.

    Fields are Voronoi cells (90 in 384^2, as many per area at other sides) with
    warped borders; each has its class's mean spectrum plus its own offset, and
    every pixel smooth texture plus noise, so single pixels overlap across classes.
    """
    rng = np.random.default_rng(seed)
    cells = max(CLASSES, round(90 * (side / 384) ** 2))
    centres = rng.uniform(0, side, size=(cells, 2))
    yy, xx = np.mgrid[0:side, 0:side]
    warp = ndimage.gaussian_filter(rng.normal(size=(2, side, side)), (0, 12, 12)) * 60
    distance = (yy[None] + warp[0] - centres[:, 0, None, None]) ** 2 + (
        xx[None] + warp[1] - centres[:, 1, None, None]
    ) ** 2
    cell = distance.argmin(0)
    labels = rng.integers(0, CLASSES, size=cells)[cell]
    means = np.random.default_rng(0).normal(size=(CLASSES, BANDS)) * 0.6
    offset = rng.normal(size=(cells, BANDS)) * 0.25
    texture = ndimage.gaussian_filter(rng.normal(size=(BANDS, side, side)), (0, 2, 2)) * 2.0
    noise = rng.normal(size=(BANDS, side, side)) * 0.7
    image = means[labels].transpose(2, 0, 1) + offset[cell].transpose(2, 0, 1) + texture + noise
    return (image * 1000 + 5000).astype(np.float32), labels


def points(truth: np.ndarray, rows: int, seed: int, *, share: float = 0.01) -> np.ndarray:
    """1-based labels on ``share`` of the pixels of the top ``rows``, drawn at random; 0 elsewhere."""
    rng = np.random.default_rng([seed, 1])
    labels = np.zeros(truth.shape, np.uint8)
    top = truth[:rows].size
    chosen = rng.choice(top, size=max(2, round(share * top)), replace=False)
    labels.flat[chosen] = truth.flat[chosen] + 1  # row-major: the first ``top`` pixels are the top rows
    return labels


def polygons(truth: np.ndarray, rows: int, seed: int, *, side: int, per_class: int) -> np.ndarray:
    """1-based labels in ``per_class`` squares of ``side`` per class within the top ``rows``,
    each clipped to the class of its centre pixel (one field); 0 elsewhere."""
    rng = np.random.default_rng([seed, 2])
    labels = np.zeros(truth.shape, np.uint8)
    half = side // 2
    inner = truth[half : rows - half, half : truth.shape[1] - half]
    for k in range(CLASSES):
        ys, xs = np.nonzero(inner == k)
        for i in rng.choice(len(ys), size=min(per_class, len(ys)), replace=False):
            window = np.s_[ys[i] : ys[i] + side, xs[i] : xs[i] + side]
            labels[window] = np.where(truth[window] == k, k + 1, labels[window])
    return labels


LABELLINGS: dict[str, Callable[[np.ndarray, int, int, Sizes], np.ndarray]] = {
    "points": lambda truth, rows, seed, sizes: points(truth, rows, seed),
    "polygons": lambda truth, rows, seed, sizes: polygons(
        truth, rows, seed, side=sizes.polygon, per_class=sizes.polygons
    ),
}


@dataclass(frozen=True)
class Outcome:
    """One scene, one labelling: both models' held-out accuracy and their training seconds."""

    gigaseg: float
    forest: float
    train_seconds: float
    forest_seconds: float
    labelled: float  # share of the scene's pixels


def sparse_vs_forest(ctx: Context) -> list[Row]:
    """Held-out accuracy of ``gigaseg train`` (sparse settings) and a random forest, points and polygons."""
    s = ctx.settings
    sizes = QUICK if s.quick else FULL
    rows = []
    with torch_threads(s.threads):
        for name, labelling in LABELLINGS.items():
            found = [compare(ctx, seed, labelling, sizes) for seed in sizes.seeds]
            rows += outcome_rows(name, found, sizes, quick=s.quick)
    return rows


def compare(ctx: Context, seed: int, labelling: Callable[..., np.ndarray], sizes: Sizes) -> Outcome:
    """Both models on one scene: trained on the labelled top rows, scored on every held-out pixel."""
    image, truth = scene(seed, sizes.side)
    rows = int(sizes.side * TRAIN_SHARE)
    labels = labelling(truth, rows, seed, sizes)
    held_out = np.zeros(truth.shape, bool)
    held_out[rows:] = True
    started = time.perf_counter()
    forest = forest_prediction(image, labels, held_out, trees=sizes.trees, threads=ctx.settings.threads)
    forest_seconds = time.perf_counter() - started
    pair = Pair(ArraySource(image[:, :rows], spatial_dims=2), ArraySource(labels[:rows], spatial_dims=2))
    config = TrainConfig(
        classes=[f"c{i}" for i in range(1, CLASSES + 1)],
        label_offset=1,
        device="cpu",
        seed=seed,
        **{**SPARSE, **sizes.train},
    )
    out = ctx.output("c10.pt")
    started = time.perf_counter()
    train([pair], out, config, overwrite=True, log=lambda line: None)
    train_seconds = time.perf_counter() - started
    model, card = load_checkpoint(out)
    tiles = card.normalize_tiles(image[None].copy())
    predicted = Predictor(model, card, device="cpu", batch_size=1)(tiles)[0].argmax(0)
    return Outcome(
        gigaseg=float((predicted[held_out] == truth[held_out]).mean()),
        forest=float((forest == truth[held_out]).mean()),
        train_seconds=train_seconds,
        forest_seconds=forest_seconds,
        labelled=float((labels > 0).mean()),
    )


def forest_prediction(
    image: np.ndarray, labels: np.ndarray, where: np.ndarray, *, trees: int, threads: int
) -> np.ndarray:
    """Class indices at ``where`` from a random forest fitted on the labelled pixels' band values."""
    from sklearn.ensemble import RandomForestClassifier  # the bench extra

    pixels = image.reshape(image.shape[0], -1).T
    known = labels.ravel() > 0
    forest = RandomForestClassifier(trees, n_jobs=threads, random_state=0)
    forest.fit(pixels[known], labels.ravel()[known] - 1)
    return forest.predict(pixels[where.ravel()])


def outcome_rows(name: str, found: list[Outcome], sizes: Sizes, *, quick: bool) -> list[Row]:
    """Mean accuracies over the scenes, their ratio and the longest training run; targets unjudged when quick."""
    ours, theirs = float(np.mean([o.gigaseg for o in found])), float(np.mean([o.forest for o in found]))
    ratio = ours / theirs if theirs else None
    longest = max(o.train_seconds for o in found)
    scenes = f"{len(found)} scene(s) of {sizes.side}^2, seeds {', '.join(map(str, sizes.seeds))}"
    labelled = f"{np.mean([o.labelled for o in found]):.2%} of the pixels labelled"

    def each(key: str) -> str:
        return "per scene " + ", ".join(f"{getattr(o, key):.3f}" for o in found)

    forest_seconds = max(o.forest_seconds for o in found)
    return [
        Row("10", f"{name}: gigaseg held-out accuracy", ours, note=f"{each('gigaseg')}; {scenes}, {labelled}"),
        Row(
            "10",
            f"{name}: random forest held-out accuracy",
            theirs,
            note=f"{each('forest')}; {sizes.trees} trees, fit and predict <= {forest_seconds:.0f} s",
        ),
        Row(
            "10",
            f"{name}: gigaseg / forest accuracy",
            ratio,
            target=">= 1.0",
            met=None if quick or ratio is None else ratio >= 1.0,
        ),
        Row(
            "10",
            f"{name}: gigaseg training time (CPU)",
            longest,
            "s",
            target="< 600 s",
            met=None if quick else longest < 600,
            note="longest of the scenes' runs",
        ),
    ]


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
