"""Train a segmentation network on (image, labels) sources of any size.

Nothing reads a whole scene: each step reads ``batch_size`` random tiles through
the sources' ``read(box)``, in a thread while the model trains on the previous
batch. A source is a :class:`gigaseg.io.sources.Source` (training uses its
``.shape``, ``.channels`` and ``.read(box) -> (float32 (C, *box.shape), valid
box.shape)``): a GeoTIFF, a NIfTI volume, an
:class:`~gigaseg.io.array.ArraySource`. A labels source has one channel of
class indices; its invalid (nodata) pixels are not trained on.

Labels may be sparse (points or patches of a survey, the rest nodata). Before
training, the labels (one band) are read once, block by block, to count the
labelled pixels of every class in every block. Validation is a seeded random
set of those blocks holding ``val_fraction`` of the labelled pixels (a spatial
split: labels of the other split's blocks are ignored in every tile), or
separate validation pairs; a validation that holds no labelled pixel stops the
run with one line. Validation tiles are centred on validation blocks with
labels, each scoring only its own block's labelled pixels. Training tiles are
drawn around labelled pixels: uniformly at random for dense labels, or
balanced over classes (a class, then one of its pixels, then a tile holding
it) for sparse ones. Each epoch scores the validation as ``gigaseg evaluate``
does (:mod:`gigaseg.models.metrics`: per-class precision, recall, Dice (F1) and
IoU, accuracy, kappa, the confusion matrix); the best epoch (mean Dice) is
written as a checkpoint with its card and metrics, and every epoch also writes
``<out>.last.pt`` with the optimizer state, from which ``resume`` continues.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import gigaseg
from gigaseg.errors import InputError, OutputExistsError
from gigaseg.io.sources import Source
from gigaseg.models.card import ModelCard
from gigaseg.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gigaseg.models.inference import resolve_device
from gigaseg.models.metrics import classification_scores, confusion_matrix
from gigaseg.models.pretrained import load_encoder_weights
from gigaseg.models.receptive import receptive_field
from gigaseg.models.registry import create_model
from gigaseg.tiler import Box

IGNORE = -100  # label of pixels that are not trained on (F.cross_entropy's default)
Log = Callable[[str], None]
SAMPLING = ("auto", "uniform", "labelled", "balanced")
DENSE = 0.5  # "auto" samples uniformly where at least this share of the training blocks is labelled


@dataclass(frozen=True)
class Pair:
    """An image and its labels, the same spatial shape."""

    image: Source
    labels: Source


@dataclass(frozen=True)
class Region:
    """A block of one pair, and how many labelled pixels of each class it holds."""

    pair: int
    box: Box
    counts: tuple[int, ...] = ()

    @property
    def labelled(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Split:
    """Training and validation blocks, and how they were chosen."""

    train: list[Region]
    val: list[Region]
    how: str  # "blocks" or "separate pairs"


@dataclass(frozen=True)
class TrainConfig:
    """The network, the sampling and the optimisation of one training run."""

    classes: list[str]
    arch: str = "unet"
    encoder: str | None = "resnet18"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    colors: list[str] | None = None
    band_names: list[str] | None = None
    clip: list[float] | None = None  # [low, high] intensity window applied before mean/std
    mean: list[float] | None = None  # per band; estimated from training tiles when None
    std: list[float] | None = None
    tile: int = 256
    overlap: int | None = None  # recommended in the card for inference; tile // 8 when None
    batch_size: int = 8
    epochs: int = 10
    steps: int = 100  # per epoch
    val_fraction: float = 0.2  # of the labelled pixels, in whole blocks
    val_tiles: int = 16
    val_block: int | None = None  # side of the split's blocks; min(tile, shortest side / 4) when None
    sampling: str = "auto"  # uniform | labelled | balanced (over classes) | auto: by the labelled share
    class_weights: str | list[float] | None = None  # cross-entropy weights: None, "balanced" or one per class
    label_offset: int = 0  # subtracted from label values: 1 for labels 1..N; values below it are unlabelled
    ignore_index: int | None = None  # a label value that marks unlabelled pixels, besides the labels' nodata
    label_attribute: str | None = None  # the class attribute of vector labels (default: one named like "class")
    encoder_weights: str | None = None  # a local state dict for the smp encoder (no download)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    augment: bool = True
    candidates: int = 1  # tiles drawn per sample; the one richest in rare classes is kept
    seed: int = 0
    device: str = "auto"
    half: bool = False  # store the weights as float16


@dataclass
class TrainResult:
    best: Path
    last: Path
    card: ModelCard
    history: list[dict[str, Any]]


def last_path(out: str | Path) -> Path:
    """``model.pt`` -> ``model.last.pt``: the resumable state beside the best checkpoint."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last{out.suffix or '.pt'}")


def train(
    pairs: list[Pair],
    out: str | Path,
    config: TrainConfig,
    *,
    val_pairs: list[Pair] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    log: Log | None = None,
) -> TrainResult:
    """Train, validate every epoch, keep the best checkpoint; see the module docstring."""
    log = log or tqdm.write
    out = Path(out)
    all_pairs = pairs + (val_pairs or [])
    check_pairs(all_pairs, config)
    if out.exists() and not (resume or overwrite):
        raise OutputExistsError(
            f"{out} exists; use overwrite to replace it or resume to continue", parameters=("overwrite", "resume")
        )
    split = split_regions(pairs, val_pairs, config)
    device = resolve_device(config.device)
    state = _resume_state(out, config, log) if resume else None
    stats_rng, val_rng = (np.random.default_rng([config.seed, 1_000_000 + i]) for i in range(2))
    card = state["card"] if state else make_card(all_pairs, split.train, config, stats_rng)
    torch.manual_seed(config.seed)
    model = create_model(card).to(device)
    encoder = card.training.get("encoder_weights") if state else None
    if config.encoder_weights and not state:
        sha = load_encoder_weights(model, config.encoder_weights, encoder=card.encoder)
        encoder = {"path": str(config.encoder_weights), "sha256": sha}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    validation = read_validation(all_pairs, split, card, config, val_rng)
    run = _Run(model, optimizer, card, config, device, pairs=all_pairs, split=split)
    history = state["history"] if state else []
    best = max((h["val_mean_dice"] for h in history), default=-1.0)
    start = len(history)
    if start:
        log(f"resuming {out} after epoch {start}")
    else:
        log(split_line(split, card.classes, run.sampler.mode))

    def summary() -> dict[str, Any]:
        return training_summary(all_pairs, split, config, history, sampling=run.sampler.mode, encoder=encoder)

    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        loss = run.epoch(epoch, progress=progress)
        metrics = evaluate(model, validation, card, batch_size=config.batch_size, device=device)
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - started, **metrics})
        log(epoch_line(history[-1], config.epochs, card.classes))
        card.training = summary()
        if metrics["val_mean_dice"] > best:
            best = metrics["val_mean_dice"]
            card.metrics = {**metrics, "epoch": epoch + 1}
            save_checkpoint(out, model, card, half=config.half)
        extra = {"optimizer": optimizer.state_dict(), "history": history}
        save_checkpoint(last_path(out), model, card, extra=extra)
    final = finish(out, summary(), half=config.half)
    return TrainResult(out, last_path(out), final, history)


def check_pairs(pairs: list[Pair], config: TrainConfig) -> None:
    """Every pair has matching shapes, the same bands, one label channel, and room for a tile."""
    if not pairs:
        raise InputError("training needs at least one (image, labels) pair")
    first = pairs[0].image
    for pair in pairs:
        name = getattr(pair.image, "path", "an image")
        if tuple(pair.image.shape) != tuple(pair.labels.shape):
            raise InputError(
                f"{name} has shape {tuple(pair.image.shape)} but its labels "
                f"{getattr(pair.labels, 'path', '')} have shape {tuple(pair.labels.shape)}"
            )
        if pair.image.channels != first.channels or len(pair.image.shape) != len(first.shape):
            raise InputError(
                f"{name} has {pair.image.channels} bands in {len(pair.image.shape)}-D, "
                f"but the first image has {first.channels} in {len(first.shape)}-D"
            )
        if pair.labels.channels != 1:
            raise InputError(f"labels {getattr(pair.labels, 'path', '')} must have one band of class indices")
    if not 0 < config.val_fraction < 1:
        raise InputError(f"val_fraction must be between 0 and 1, got {config.val_fraction}")
    if config.sampling not in SAMPLING:
        raise InputError(f"sampling must be one of {', '.join(SAMPLING)}, got {config.sampling!r}")
    weights = config.class_weights
    if isinstance(weights, str) and weights != "balanced":
        raise InputError(f"class weights must be 'balanced' or one number per class, got {weights!r}")
    if isinstance(weights, list) and (len(weights) != len(config.classes) or min(weights) < 0):
        raise InputError(
            f"{len(weights)} class weights for {len(config.classes)} classes; give one number >= 0 per class"
        )
    if config.val_block is not None and config.val_block < 1:
        raise InputError(f"val_block must be a positive number of pixels, got {config.val_block}")


def to_classes(values: np.ndarray, labelled: np.ndarray, config: TrainConfig, *, where: str) -> np.ndarray:
    """Label values as int64 class indices: ``value - label_offset``, ``IGNORE`` where unlabelled.

    Unlabelled: the labels' nodata, ``ignore_index``, and values below ``label_offset``.
    A value beyond the last class is an error (``where`` names the labels and box).
    """
    values = np.rint(values).astype(np.int64)
    keep = labelled.copy()
    if config.ignore_index is not None:
        keep &= values != config.ignore_index
    labels = np.where(keep, values - config.label_offset, IGNORE)
    if config.label_offset:
        labels[labels < 0] = IGNORE
    classes = len(config.classes)
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= classes))
    if bad.any():
        value = int(labels[bad][0]) + config.label_offset
        raise InputError(
            f"labels {where} hold value {value}, which is no class index "
            f"{config.label_offset}..{config.label_offset + classes - 1}; mark unlabelled pixels as the labels' "
            "nodata or with ignore_index, and use label_offset 1 for labels that start at 1",
            parameters=("ignore_index", "label_offset"),
        )
    return labels


def read_labels(pair: Pair, box: Box, config: TrainConfig) -> np.ndarray:
    """The int64 class indices of ``box`` (``IGNORE`` where unlabelled)."""
    values, labelled = pair.labels.read(box)
    return to_classes(values[0], labelled, config, where=f"{getattr(pair.labels, 'path', '')} in {box}")


def block_side(shape: tuple[int, ...], config: TrainConfig) -> int:
    """The side of the split's blocks: ``val_block``, else one tile but at least 4 blocks a side."""
    return config.val_block or max(8, min(config.tile, math.ceil(min(shape) / 4)))


def census(pairs: list[Pair], config: TrainConfig, *, first: int = 0) -> list[Region]:
    """Every pair cut into blocks, with the labelled pixels of each class in each (labels read once)."""
    regions = []
    for i, pair in enumerate(pairs):
        shape = tuple(pair.labels.shape)
        side = block_side(shape, config)
        for start in itertools.product(*(range(0, n, side) for n in shape)):
            box = Box(start, tuple(min(a + side, n) for a, n in zip(start, shape, strict=True)))
            labels = read_labels(pair, box, config)
            counts = np.bincount(labels[labels != IGNORE], minlength=len(config.classes))
            regions.append(Region(first + i, box, tuple(int(c) for c in counts)))
    return regions


def split_regions(pairs: list[Pair], val_pairs: list[Pair] | None, config: TrainConfig) -> Split:
    """Training and validation blocks: separate pairs, or seeded random blocks of the scenes
    that hold ``val_fraction`` of the labelled pixels. Either must hold labelled pixels."""
    if val_pairs:
        split = Split(census(pairs, config), census(val_pairs, config, first=len(pairs)), "separate pairs")
        if not sum(r.labelled for r in split.val):
            raise InputError(
                f"validation holds no labelled pixel: the labels of the {len(val_pairs)} validation pairs are all "
                f"nodata{_ignored(config)}; give validation labels",
                parameters=("ignore_index", "label_offset"),
            )
    else:
        blocks = census(pairs, config)
        held = choose_validation(blocks, config.val_fraction, np.random.default_rng([config.seed, 1_000_003]))
        split = Split([r for i, r in enumerate(blocks) if i not in held], [blocks[i] for i in sorted(held)], "blocks")
        total, labelled_blocks = sum(r.labelled for r in blocks), sum(bool(r.labelled) for r in blocks)
        if labelled_blocks < 2:
            side = block_side(tuple(pairs[0].labels.shape), config)
            raise InputError(
                f"validation holds no labelled pixel: the scenes' {total} labelled pixels lie in "
                f"{labelled_blocks} block(s) of {side} px, so none can be held out; give val_images and val_labels"
                + (f" or a smaller val_block (now {side})" if total else ""),
                parameters=("val_images", "val_labels", "val_block"),
            )
    if not sum(r.labelled for r in split.train):
        raise InputError(
            f"the training labels hold no labelled pixel: they are all nodata{_ignored(config)}",
            parameters=("ignore_index", "label_offset"),
        )
    return split


def _ignored(config: TrainConfig) -> str:
    if config.ignore_index is None and not config.label_offset:
        return ""
    return f" or ignored (ignore_index {config.ignore_index}, label_offset {config.label_offset})"


def choose_validation(blocks: list[Region], fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices of random labelled blocks holding about ``fraction`` of the labelled pixels.

    Blocks are visited in a random order; each is taken if that brings the held-out
    count closer to the share. At least one, never all labelled blocks.
    """
    labelled = [i for i, r in enumerate(blocks) if r.labelled]
    if len(labelled) < 2:
        return set()
    target = fraction * sum(blocks[i].labelled for i in labelled)
    held: set[int] = set()
    count = 0
    for i in rng.permutation(labelled):
        if len(held) == len(labelled) - 1:
            break
        if count + blocks[i].labelled / 2 <= target:
            held.add(int(i))
            count += blocks[i].labelled
    if not held:
        held.add(min(labelled, key=lambda i: blocks[i].labelled))
    return held


def tile_around(point: tuple[int, ...], shape: tuple[int, ...], tile: int, rng: np.random.Generator) -> Box:
    """A box of side ``tile`` (or the scene's side, if smaller) inside the scene, holding ``point``
    at a random place."""
    start = []
    for p, n in zip(point, shape, strict=True):
        side = min(tile, n)
        start.append(int(rng.integers(max(0, p - side + 1), min(p, n - side) + 1)))
    return Box(tuple(start), tuple(a + min(tile, n) for a, n in zip(start, shape, strict=True)))


def tile_over(block: Box, shape: tuple[int, ...], tile: int) -> Box:
    """A box of side ``tile`` (or the scene's side) centred on ``block``, moved inside the scene."""
    start = []
    for a, b, n in zip(block.start, block.stop, shape, strict=True):
        side = min(tile, n)
        start.append(min(max(0, (a + b - side) // 2), n - side))
    return Box(tuple(start), tuple(a + min(tile, n) for a, n in zip(start, shape, strict=True)))


def pick_region(regions: list[Region], rng: np.random.Generator, weights: np.ndarray | None = None) -> Region:
    """A region chosen with probability proportional to ``weights`` (default: its size)."""
    sizes = np.array([r.box.size for r in regions], np.float64) if weights is None else weights
    return regions[int(rng.choice(len(regions), p=sizes / sizes.sum()))]


def random_point(box: Box, rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(rng.integers(a, b)) for a, b in zip(box.start, box.stop, strict=True))


def mask_labels(labels: np.ndarray, box: Box, *, keep: Sequence[Box] | None = None, drop: Sequence[Box] = ()) -> None:
    """Set ``labels`` (of ``box``) to ``IGNORE`` outside the ``keep`` boxes and inside the ``drop`` ones."""
    if keep is not None:
        inside = np.zeros(labels.shape, bool)
        for other in keep:
            part = box.intersection(other)
            if part is not None:
                inside[part.slices(box.start)] = True
        labels[~inside] = IGNORE
    for other in drop:
        part = box.intersection(other)
        if part is not None:
            labels[part.slices(box.start)] = IGNORE


def read_sample(
    pair: Pair, box: Box, config: TrainConfig, *, keep: Sequence[Box] | None = None, drop: Sequence[Box] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(C, *tile)``, validity and int64 labels of ``box``, padded up to the tile.

    Labels are ``IGNORE`` where the image or the labels are invalid, outside ``keep``,
    inside ``drop`` (the other split's blocks) and in the padding.
    """
    image, valid = pair.image.read(box)
    labels = read_labels(pair, box, config)
    labels[~valid] = IGNORE
    mask_labels(labels, box, keep=keep, drop=drop)
    pad = [(0, config.tile - n) for n in box.shape]
    if any(p for _, p in pad):
        image = np.pad(image, [(0, 0), *pad], mode="symmetric")
        valid = np.pad(valid, pad, mode="constant", constant_values=False)
        labels = np.pad(labels, pad, mode="constant", constant_values=IGNORE)
    return image, valid, labels


def band_statistics(
    pairs: list[Pair],
    regions: list[Region],
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    tiles: int = 32,
) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of the valid pixels of random training tiles."""
    total: np.ndarray | float = 0.0  # per-band sums from the first tile on
    square: np.ndarray | float = 0.0
    count = 0.0
    for _ in range(tiles):
        region = pick_region(regions, rng)
        shape = tuple(pairs[region.pair].image.shape)
        data, valid = pairs[region.pair].image.read(tile_around(random_point(region.box, rng), shape, config.tile, rng))
        if config.clip:
            np.clip(data, *config.clip, out=data)
        pixels = data[:, valid].astype(np.float64)
        total, square, count = total + pixels.sum(1), square + (pixels**2).sum(1), count + valid.sum()
    if not count:
        raise InputError("no valid pixels found in training tiles; is the whole image nodata?")
    mean = np.asarray(total / count)
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def make_card(pairs: list[Pair], regions: list[Region], config: TrainConfig, rng: np.random.Generator) -> ModelCard:
    """The card of the network to train; band statistics measured when the config has none."""
    image = pairs[0].image
    mean, std = config.mean, config.std
    if mean is None or std is None:
        mean, std = band_statistics(pairs, regions, config, rng)
    return ModelCard(
        arch=config.arch,
        encoder=config.encoder,
        arch_kwargs=dict(config.arch_kwargs),
        in_channels=image.channels,
        spatial_dims=len(image.shape),
        classes=list(config.classes),
        colors=list(config.colors) if config.colors else None,
        band_names=list(config.band_names or getattr(image, "band_names", None) or []) or None,
        clip=list(config.clip) if config.clip else None,
        mean=mean,
        std=std,
        tile=config.tile,
        overlap=config.tile // 8 if config.overlap is None else config.overlap,
    )


def normalize(image: np.ndarray, valid: np.ndarray, card: ModelCard) -> np.ndarray:
    """Normalise per band and zero invalid pixels, exactly as inference does."""
    image = card.normalize_tiles(image[None].astype(np.float32, copy=True))[0]
    image *= valid
    return image


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips along every spatial axis, and a random rot90 in the last two axes when square."""
    for axis in range(labels.ndim):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis + 1), np.flip(labels, axis)
    if labels.shape[-1] == labels.shape[-2]:
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, axes=(-2, -1)), np.rot90(labels, k, axes=(-2, -1))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """Inverse class frequencies, the largest 1 (unseen classes too)."""
    weights = 1.0 / np.maximum(counts, 1.0)
    return weights / weights.max()


def loss_weights(config: TrainConfig, counts: np.ndarray) -> np.ndarray | None:
    """Cross-entropy class weights: none, given, or "balanced" (``n / (classes x n_c)`` over the
    training labels, as scikit-learn's; 1 for classes without training labels)."""
    if config.class_weights is None:
        return None
    if config.class_weights != "balanced":
        return np.asarray(config.class_weights, np.float64)
    present = counts > 0
    weights = np.ones(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class Sampler:
    """Training tiles of the training blocks, as ``config.sampling`` says.

    ``uniform``: a block (in proportion to its labelled pixels), a random pixel of it, a
    tile holding that pixel at a random place. ``labelled``: the same around a random
    labelled pixel. ``balanced``: a class (uniformly, among those with training labels),
    a block (in proportion to its pixels of that class), one of them, a tile around it.
    ``auto``: ``uniform`` where at least half the training blocks' pixels are labelled,
    else ``balanced``. Labels of validation blocks are ignored in every tile.
    """

    def __init__(self, pairs: list[Pair], split: Split, config: TrainConfig) -> None:
        self.pairs, self.config = pairs, config
        self.regions = [r for r in split.train if r.labelled]
        self.counts = np.array([r.counts for r in self.regions], np.float64)
        labelled = self.counts.sum()
        self.mode = config.sampling
        if self.mode == "auto":
            self.mode = "uniform" if labelled >= DENSE * sum(r.box.size for r in split.train) else "balanced"
        self.present = np.flatnonzero(self.counts.sum(0))
        self.held: dict[int, list[Box]] = {}
        for r in split.val:
            self.held.setdefault(r.pair, []).append(r.box)
        self.cache: dict[tuple[int, Box], np.ndarray] = {}

    def box(self, rng: np.random.Generator) -> tuple[int, Box]:
        """A pair and a training tile of it."""
        if self.mode == "balanced":
            cls = int(rng.choice(self.present))
            region = pick_region(self.regions, rng, self.counts[:, cls])
            point = self._pixel(region, rng, cls)
        else:
            region = pick_region(self.regions, rng, self.counts.sum(1))
            point = self._pixel(region, rng, None) if self.mode == "labelled" else random_point(region.box, rng)
        return region.pair, tile_around(point, tuple(self.pairs[region.pair].image.shape), self.config.tile, rng)

    def read(self, pair: int, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return read_sample(self.pairs[pair], box, self.config, drop=self.held.get(pair, []))

    def _pixel(self, region: Region, rng: np.random.Generator, cls: int | None) -> tuple[int, ...]:
        labels = self._labels(region)
        where = np.flatnonzero(labels != IGNORE if cls is None else labels == cls)
        index = np.unravel_index(int(rng.choice(where)), labels.shape)
        return tuple(int(a + i) for a, i in zip(region.box.start, index, strict=True))

    def _labels(self, region: Region) -> np.ndarray:
        key = (region.pair, region.box)
        if key not in self.cache:
            if len(self.cache) >= 256:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = read_labels(self.pairs[region.pair], region.box, self.config).astype(np.int16)
        return self.cache[key]


def choose_box(sampler: Sampler, weights: np.ndarray, rng: np.random.Generator) -> tuple[int, Box]:
    """A training tile; with ``candidates > 1``, of that many the one whose labels weigh most
    (nnU-Net-style oversampling of small structures, without scanning whole labels)."""
    best: tuple[int, Box] | None = None
    best_score = -1.0
    for _ in range(sampler.config.candidates):
        pair, box = sampler.box(rng)
        if sampler.config.candidates == 1:
            return pair, box
        labels = read_labels(sampler.pairs[pair], box, sampler.config)
        mask_labels(labels, box, drop=sampler.held.get(pair, []))
        score = float(weights[labels[labels != IGNORE]].sum())
        if score > best_score:
            best, best_score = (pair, box), score
    assert best is not None, "no candidate tile drawn (candidates < 1?) or none scored"
    return best


def make_batch(
    sampler: Sampler,
    card: ModelCard,
    rng: np.random.Generator,
    *,
    weights: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    config = sampler.config
    images, labels = [], []
    for _ in range(config.batch_size):
        image, valid, target = sampler.read(*choose_box(sampler, weights, rng))
        image = normalize(image, valid, card)
        if config.augment:
            image, target = augment(image, target, rng)
        images.append(image)
        labels.append(target)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def prefetched(make: Callable[[], Any], count: int) -> Iterator[Any]:
    """``make()`` ``count`` times, each next one computed in a thread meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix="gigaseg-train-read") as pool:
        future = pool.submit(make)
        for i in range(count):
            result = future.result()
            if i + 1 < count:
                future = pool.submit(make)
            yield result


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, *, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice on the labelled pixels of the batch."""
    classes = logits.shape[1]
    mask = (labels != IGNORE).unsqueeze(1)
    probs = torch.softmax(logits, dim=1) * mask
    onehot = F.one_hot(labels.clamp(min=0), classes).movedim(-1, 1) * mask
    axes = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, dice_weight: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy (with class ``weight``) plus ``dice_weight`` x soft Dice, both ignoring unlabelled pixels."""
    if (labels != IGNORE).any():
        ce = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)
    else:
        ce = logits.sum() * 0
    return ce + dice_weight * dice_loss(logits, labels)


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 2% of the peak."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


class _Run:
    """The moving parts of one training run: model, optimizer, sampling."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        card: ModelCard,
        config: TrainConfig,
        device: torch.device,
        *,
        pairs: list[Pair],
        split: Split,
    ) -> None:
        self.model, self.optimizer, self.card, self.config = model, optimizer, card, config
        self.device, self.sampler = device, Sampler(pairs, split, config)
        counts = np.array([r.counts for r in split.train], np.float64).sum(0)
        self.weights = inverse_frequency(counts)  # of the candidates
        ce = loss_weights(config, counts)
        self.loss_weight = None if ce is None else torch.as_tensor(ce, dtype=torch.float32, device=device)

    def epoch(self, epoch: int, *, progress: bool) -> float:
        """One epoch of ``config.steps`` steps; the mean loss. Epoch ``e`` samples the same
        tiles whether or not the run was resumed before it."""
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout, where a network has it
        self.model.train()
        losses = []
        batches = prefetched(
            lambda: make_batch(self.sampler, self.card, rng, weights=self.weights),
            config.steps,
        )
        from gigaseg.jobs.progress import Progress  # the commands' bar, shown on a terminal only

        desc = f"epoch {epoch + 1}/{config.epochs}"
        with Progress(config.steps, desc=desc, unit="step", enabled=progress) as bar:  # steps/s, the epoch's ETA
            for step, (images, labels) in enumerate(batches):
                lr = learning_rate(epoch * config.steps + step, config.epochs * config.steps, config.lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                losses.append(self._step(images, labels))
                bar.note(f"loss {losses[-1]:.3f}")
                bar.advance()
        return float(np.mean(losses))

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with _autocast(self.device):
            logits = self.model(images)
        loss = segmentation_loss(logits.float(), labels, dice_weight=self.config.dice_weight, weight=self.loss_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def _autocast(device: torch.device) -> Any:
    """bfloat16 autocast on CUDA devices that have it; nothing elsewhere."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class Validation:
    images: np.ndarray  # (N, C, *tile) normalised
    labels: np.ndarray  # (N, *tile) int64, IGNORE where unlabelled


def read_validation(
    pairs: list[Pair], split: Split, card: ModelCard, config: TrainConfig, rng: np.random.Generator
) -> Validation:
    """A fixed, seeded set of validation tiles, read once: ``val_tiles`` validation blocks with
    labels (see :func:`validation_tiles`), each scored on its own pixels only, in a tile
    centred on it."""
    blocks = [r for r in split.val if r.labelled]
    counts = np.array([r.labelled for r in blocks], np.float64)
    images, labels = [], []
    for i in validation_tiles(blocks, config.val_tiles, rng):
        region = blocks[i]
        pair = pairs[region.pair]
        box = tile_over(region.box, tuple(pair.image.shape), config.tile)
        image, valid, target = read_sample(pair, box, config, keep=[region.box])
        images.append(normalize(image, valid, card))
        labels.append(target)
    validation = Validation(np.stack(images), np.stack(labels))
    if not (validation.labels != IGNORE).any():
        raise InputError(
            f"validation holds no labelled pixel: its {int(counts.sum())} labelled pixels all fall on the "
            "images' nodata; give val_images and val_labels or another seed",
            parameters=("val_images", "val_labels", "seed"),
        )
    return validation


def validation_tiles(blocks: list[Region], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` of the blocks: first, rarest class first, the block holding most of each class
    not yet in one chosen (so a small organ is scored at all); the rest drawn at random in
    proportion to their labelled pixels."""
    per_class = np.array([r.counts for r in blocks], np.int64)
    chosen: list[int] = []
    for k in np.argsort(per_class.sum(axis=0), kind="stable"):
        if len(chosen) < count and per_class[:, k].any() and not per_class[chosen, k].any():
            chosen.append(int(np.argmax(per_class[:, k])))
    rest = [i for i in range(len(blocks)) if i not in chosen]
    extra = min(count - len(chosen), len(rest))
    if extra > 0:
        weights = per_class[rest].sum(axis=1).astype(np.float64)
        chosen += [int(i) for i in rng.choice(rest, size=extra, replace=False, p=weights / weights.sum())]
    return sorted(chosen)


@torch.inference_mode()
def evaluate(
    model: nn.Module, validation: Validation, card: ModelCard, *, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """The validation tiles' confusion matrix and its scores (:func:`validation_scores`)."""
    model.eval()
    k = card.num_classes
    matrix = np.zeros((k, k), np.int64)
    for i in range(0, len(validation.images), batch_size):
        x = torch.from_numpy(validation.images[i : i + batch_size]).to(device)
        with _autocast(device):
            predicted = model(x).argmax(dim=1).cpu().numpy()
        labels = validation.labels[i : i + batch_size]
        matrix += confusion_matrix(labels, predicted, k, valid=labels != IGNORE)
    return validation_scores(matrix, card.classes)


def validation_scores(matrix: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """An epoch's ``val_*`` figures: :func:`~gigaseg.models.metrics.classification_scores`
    of ``matrix[true, predicted]`` (those of ``gigaseg evaluate``; F1 is Dice), rounded.

    A class absent from both the labels and the predictions has no score (None)
    and does not count in the means; means and accuracy are 0.0 when no pixel was scored.
    """
    found = classification_scores(matrix, classes)

    def per_class(key: str) -> dict[str, float | None]:
        return {name: _round(scores[key]) for name, scores in found["classes"].items()}

    macro = found["macro"]
    return {
        "val_dice": per_class("f1"),
        "val_iou": per_class("iou"),
        "val_precision": per_class("precision"),
        "val_recall": per_class("recall"),
        "val_mean_dice": _round(macro["f1"]) or 0.0,
        "val_mean_iou": _round(macro["iou"]) or 0.0,
        "val_mean_precision": _round(macro["precision"]) or 0.0,
        "val_mean_recall": _round(macro["recall"]) or 0.0,
        "val_pixel_accuracy": _round(found["overall_accuracy"]) or 0.0,
        "val_kappa": _round(found["kappa"]),
        "val_pixels": {name: scores["reference_pixels"] for name, scores in found["classes"].items()},
        "val_confusion_matrix": np.asarray(matrix, np.int64).tolist(),  # [true][predicted]
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def epoch_line(record: dict[str, Any], epochs: int, classes: list[str]) -> str:
    """``epoch 3/10: loss 0.412, val dice 0.871 (water 0.95, ...), iou 0.80, acc 0.93, kappa 0.90, 12.3 s``."""
    per_class = ", ".join(f"{name} {_fmt(record['val_dice'][name])}" for name in classes)
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f}, "
        f"val dice {record['val_mean_dice']:.3f} ({per_class}), iou {record['val_mean_iou']:.3f}, "
        f"acc {record['val_pixel_accuracy']:.3f}, kappa {_fmt(record['val_kappa'])}, {record['seconds']:.1f} s"
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def split_record(split: Split, classes: list[str], *, val_fraction: float) -> dict[str, Any]:
    """The split in the card: how, blocks, labelled pixels per class on each side, the held-out blocks."""

    def per_class(regions: list[Region]) -> dict[str, int]:
        counts = np.array([r.counts for r in regions], np.int64).sum(0) if regions else np.zeros(len(classes))
        return {name: int(n) for name, n in zip(classes, counts, strict=True)}

    record: dict[str, Any] = {
        "how": split.how,
        "blocks": {"train": len(split.train), "val": len(split.val)},
        "block_sides": sorted({max(r.box.shape) for r in split.train + split.val}),
        "labelled": {"train": per_class(split.train), "val": per_class(split.val)},
    }
    if split.how == "blocks":
        record["val_fraction"] = val_fraction
        record["val_blocks"] = [[r.pair, list(r.box.start), list(r.box.stop)] for r in split.val]
    return record


def split_line(split: Split, classes: list[str], mode: str) -> str:
    """``split: 13 training blocks (2,812 labelled px), 3 validation blocks (702 px; water 88, ...)``."""
    record = split_record(split, classes, val_fraction=0.0)
    val = ", ".join(f"{name} {n}" for name, n in record["labelled"]["val"].items())
    return (
        f"split ({split.how}): {len(split.train)} training blocks ({sum(record['labelled']['train'].values()):,} "
        f"labelled px), {len(split.val)} validation blocks ({sum(record['labelled']['val'].values()):,} px: {val}); "
        f"sampling {mode}"
    )


def training_summary(
    pairs: list[Pair],
    split: Split,
    config: TrainConfig,
    history: list[dict[str, Any]],
    *,
    sampling: str,
    encoder: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What the card says about the training data and procedure."""
    used = sorted({r.pair for r in split.train} | {r.pair for r in split.val})
    record = split_record(split, list(config.classes), val_fraction=config.val_fraction)
    weights = config.class_weights
    return {
        "data": [
            {"image": str(getattr(pairs[i].image, "path", "array")), "shape": list(pairs[i].image.shape)} for i in used
        ],
        "train_pixels": sum(record["labelled"]["train"].values()),  # labelled
        "val_pixels": sum(record["labelled"]["val"].values()),
        "val_split": "separate pairs"
        if split.how == "separate pairs"
        else f"random blocks holding {config.val_fraction:.0%} of the labelled pixels",
        "split": record,
        "val_tiles": config.val_tiles,
        "labels": {"offset": config.label_offset, "ignore_index": config.ignore_index},
        "sampling": sampling,
        "class_weights": weights,
        "encoder_weights": encoder,
        "tile": config.tile,
        "batch_size": config.batch_size,
        "epochs": len(history),
        "steps_per_epoch": config.steps,
        "tiles_seen": len(history) * config.steps * config.batch_size,
        "optimizer": f"AdamW lr {config.lr} (warm-up, cosine), weight decay {config.weight_decay}",
        "loss": f"cross-entropy{' (class weights)' if weights else ''} + {config.dice_weight} x soft Dice",
        "augment": "random flips on every axis, rot90" if config.augment else "none",
        "seed": config.seed,
        "seconds": round(sum(h["seconds"] for h in history), 1),
        "gigaseg": gigaseg.__version__,
    }


def _resume_state(out: Path, config: TrainConfig, log: Log) -> dict[str, Any] | None:
    """The state saved by the last epoch, checked against this run's config."""
    path = last_path(out)
    if not path.exists():
        log(f"nothing to resume: {path} does not exist; starting afresh")
        return None
    data = read_checkpoint(path)
    card = ModelCard.from_dict(data["card"])
    asked = (config.arch, config.encoder, dict(config.arch_kwargs), list(config.classes))
    found = (card.arch, card.encoder, card.arch_kwargs, card.classes)
    if asked != found:
        raise InputError(
            f"cannot resume from {path}: it trains {found[0]} ({found[1]}, {found[2]}, classes {found[3]}) "
            f"but this run asks for {asked[0]} ({asked[1]}, {asked[2]}, classes {asked[3]})"
        )
    return {**data, "card": card}


def finish(out: Path, training: dict[str, Any], *, half: bool) -> ModelCard:
    """Write the whole run's summary and the measured receptive field into the best card."""
    model, card = load_checkpoint(out)
    card.training = training
    # measured on twice the tile (capped), so a field larger than one tile shows
    size = min(2 * max(card.tile_shape()), 512 if card.spatial_dims == 2 else 96)
    card.receptive_field = card.receptive_field or receptive_field(model, card, size=size)
    save_checkpoint(out, model, card, half=half)
    return card
