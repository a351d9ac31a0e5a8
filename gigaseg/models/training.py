"""Train a segmentation network on (image, labels) sources of any size.

Nothing reads a whole scene: each step reads ``batch_size`` random tiles through
the sources' ``read(box)``, in a thread while the model trains on the previous
batch. A source is anything with ``.shape`` (spatial), ``.channels`` and
``.read(box) -> (float32 (C, *box.shape), valid box.shape)``: a GeoTIFF, a NIfTI
volume, an :class:`~gigaseg.io.array.ArraySource`. A labels source has one
channel of class indices; its invalid (nodata) pixels are not trained on.

Validation holds out the last ``val_fraction`` of every scene along its first
axis (a spatial split, so neighbouring pixels do not leak into it), or uses
separate validation pairs. Each epoch reports per-class Dice and IoU on a fixed
set of validation tiles; the best epoch (mean Dice) is written as a checkpoint
with its card and metrics, and every epoch also writes ``<out>.last.pt`` with
the optimizer state, from which ``resume`` continues.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import gigaseg
from gigaseg.errors import InputError, OutputExistsError
from gigaseg.models.card import ModelCard
from gigaseg.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gigaseg.models.inference import resolve_device
from gigaseg.models.receptive import receptive_field
from gigaseg.models.registry import create_model
from gigaseg.tiler import Box

IGNORE = -100  # label of pixels that are not trained on (F.cross_entropy's default)
Log = Callable[[str], None]


class Source(Protocol):
    """What training reads from: spatial shape, channels, and boxes of pixels."""

    shape: tuple[int, ...]

    @property
    def channels(self) -> int: ...

    def read(self, box: Box) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Pair:
    """An image and its labels, the same spatial shape."""

    image: Source
    labels: Source


@dataclass(frozen=True)
class Region:
    """A box of one pair that tiles may be sampled from."""

    pair: int
    box: Box


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
    overlap: int = 32  # recommended in the card for inference
    batch_size: int = 8
    epochs: int = 10
    steps: int = 100  # per epoch
    val_fraction: float = 0.2
    val_tiles: int = 16
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
        raise OutputExistsError(f"{out} exists; use --overwrite to replace it or --resume to continue")
    train_regions, val_regions = split_regions(pairs, val_pairs, config)
    device = resolve_device(config.device)
    state = _resume_state(out, config, log) if resume else None
    stats_rng, val_rng = (np.random.default_rng([config.seed, 1_000_000 + i]) for i in range(2))
    card = state["card"] if state else make_card(all_pairs, train_regions, config, stats_rng)
    torch.manual_seed(config.seed)
    model = create_model(card).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
    validation = read_validation(all_pairs, val_regions, card, config, val_rng)
    run = _Run(model, optimizer, card, config, device, pairs=all_pairs, regions=train_regions)
    history = state["history"] if state else []
    best = max((h["val_mean_dice"] for h in history), default=-1.0)
    start = len(history)
    if start:
        log(f"resuming {out} after epoch {start}")
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        loss = run.epoch(epoch, progress=progress)
        metrics = evaluate(model, validation, card, batch_size=config.batch_size, device=device)
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": time.perf_counter() - started, **metrics})
        log(epoch_line(history[-1], config.epochs, card.classes))
        card.training = training_summary(all_pairs, train_regions, val_regions, config, history)
        if metrics["val_mean_dice"] > best:
            best = metrics["val_mean_dice"]
            card.metrics = {**metrics, "epoch": epoch + 1}
            save_checkpoint(out, model, card, half=config.half)
        extra = {"optimizer": optimizer.state_dict(), "history": history}
        save_checkpoint(last_path(out), model, card, extra=extra)
    final = finish(out, training_summary(all_pairs, train_regions, val_regions, config, history), half=config.half)
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


def split_regions(
    pairs: list[Pair], val_pairs: list[Pair] | None, config: TrainConfig
) -> tuple[list[Region], list[Region]]:
    """Training and validation regions: separate pairs, or the last rows (slices) of each scene."""
    if val_pairs:
        whole = [Region(i, Box((0,) * len(p.image.shape), tuple(p.image.shape))) for i, p in enumerate(pairs)]
        held = [
            Region(len(pairs) + i, Box((0,) * len(p.image.shape), tuple(p.image.shape)))
            for i, p in enumerate(val_pairs)
        ]
        return whole, held
    train_regions, val_regions = [], []
    for i, pair in enumerate(pairs):
        shape = tuple(pair.image.shape)
        held = max(1, round(shape[0] * config.val_fraction))
        if held >= shape[0]:
            raise InputError(
                f"{getattr(pair.image, 'path', 'an image')} has {shape[0]} rows along its first axis, "
                "too few to hold some out for validation; give validation pairs"
            )
        box = Box((0,) * len(shape), shape)
        train_regions.append(Region(i, box.with_axis(0, 0, shape[0] - held)))
        val_regions.append(Region(i, box.with_axis(0, shape[0] - held, shape[0])))
    return train_regions, val_regions


def sample_box(region: Region, tile: int, rng: np.random.Generator) -> Box:
    """A random box of side ``tile`` (or the region's side, if smaller) inside ``region``."""
    sides = [min(tile, n) for n in region.box.shape]
    start = tuple(
        a + int(rng.integers(0, n - s + 1)) for a, n, s in zip(region.box.start, region.box.shape, sides, strict=True)
    )
    return Box(start, tuple(a + s for a, s in zip(start, sides, strict=True)))


def pick_region(regions: list[Region], rng: np.random.Generator) -> Region:
    """A region chosen with probability proportional to its size."""
    sizes = np.array([r.box.size for r in regions], np.float64)
    return regions[int(rng.choice(len(regions), p=sizes / sizes.sum()))]


def read_sample(pair: Pair, box: Box, *, tile: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(C, *tile)``, validity and int64 labels of ``box``, padded up to ``tile``.

    Labels are ``IGNORE`` where the image or the labels are invalid and in the padding.
    """
    image, valid = pair.image.read(box)
    values, labelled = pair.labels.read(box)
    labels = np.where(valid & labelled, np.rint(values[0]), IGNORE).astype(np.int64)
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= classes))
    if bad.any():
        raise InputError(
            f"labels {getattr(pair.labels, 'path', '')} hold value {int(labels[bad][0])} in {box}, "
            f"which is no class index 0..{classes - 1}; mark unlabelled pixels as the labels' nodata"
        )
    pad = [(0, tile - n) for n in box.shape]
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
    total = square = count = 0.0
    for _ in range(tiles):
        region = pick_region(regions, rng)
        data, valid = pairs[region.pair].image.read(sample_box(region, config.tile, rng))
        if config.clip:
            np.clip(data, *config.clip, out=data)
        pixels = data[:, valid].astype(np.float64)
        total, square, count = total + pixels.sum(1), square + (pixels**2).sum(1), count + valid.sum()
    if not count:
        raise InputError("no valid pixels found in training tiles; is the whole image nodata?")
    mean = total / count
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
        overlap=config.overlap,
    )


def normalize(image: np.ndarray, valid: np.ndarray, card: ModelCard) -> np.ndarray:
    """Normalise per band and zero invalid pixels, exactly as inference does."""
    image = card.normalize(image[None].astype(np.float32, copy=True))[0]
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


def class_weights(
    pairs: list[Pair],
    regions: list[Region],
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    tiles: int = 32,
) -> np.ndarray:
    """Inverse class frequencies in random training tiles' labels, the largest 1 (unseen classes too)."""
    counts = np.zeros(len(config.classes), np.float64)
    for _ in range(tiles):
        region = pick_region(regions, rng)
        values, labelled = pairs[region.pair].labels.read(sample_box(region, config.tile, rng))
        found = np.rint(values[0][labelled]).astype(np.int64)
        counts += np.bincount(found[(found >= 0) & (found < len(counts))], minlength=len(counts))
    weights = 1.0 / np.maximum(counts, 1.0)
    return weights / weights.max()


def choose_box(
    pairs: list[Pair],
    regions: list[Region],
    config: TrainConfig,
    weights: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Region, Box]:
    """A random tile; with ``config.candidates > 1``, of that many the one whose labels weigh
    most (nnU-Net-style oversampling of small structures, without scanning whole labels)."""
    best, best_score = None, -1.0
    for _ in range(config.candidates):
        region = pick_region(regions, rng)
        box = sample_box(region, config.tile, rng)
        if config.candidates == 1:
            return region, box
        values, labelled = pairs[region.pair].labels.read(box)
        found = np.clip(np.rint(values[0][labelled]).astype(np.int64), 0, len(weights) - 1)
        score = float(weights[found].sum())
        if score > best_score:
            best, best_score = (region, box), score
    return best


def make_batch(
    pairs: list[Pair],
    regions: list[Region],
    card: ModelCard,
    config: TrainConfig,
    rng: np.random.Generator,
    *,
    weights: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for _ in range(config.batch_size):
        region, box = choose_box(pairs, regions, config, weights, rng)
        image, valid, target = read_sample(pairs[region.pair], box, tile=config.tile, classes=card.num_classes)
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


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, *, dice_weight: float) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` x soft Dice, both ignoring unlabelled pixels."""
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE) if (labels != IGNORE).any() else logits.sum() * 0
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
        regions: list[Region],
    ) -> None:
        self.model, self.optimizer, self.card, self.config = model, optimizer, card, config
        self.device, self.pairs, self.regions = device, pairs, regions
        self.weights = np.ones(card.num_classes)
        if config.candidates > 1:
            self.weights = class_weights(pairs, regions, config, np.random.default_rng([config.seed, 1_000_002]))

    def epoch(self, epoch: int, *, progress: bool) -> float:
        """One epoch of ``config.steps`` steps; the mean loss. Epoch ``e`` samples the same
        tiles whether or not the run was resumed before it."""
        config = self.config
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout, where a network has it
        self.model.train()
        losses = []
        batches = prefetched(
            lambda: make_batch(self.pairs, self.regions, self.card, config, rng, weights=self.weights),
            config.steps,
        )
        bar = tqdm(
            batches,
            total=config.steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for step, (images, labels) in enumerate(bar):
            lr = learning_rate(epoch * config.steps + step, config.epochs * config.steps, config.lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            losses.append(self._step(images, labels))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return float(np.mean(losses))

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with _autocast(self.device):
            logits = self.model(images)
        loss = segmentation_loss(logits.float(), labels, dice_weight=self.config.dice_weight)
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
    pairs: list[Pair], regions: list[Region], card: ModelCard, config: TrainConfig, rng: np.random.Generator
) -> Validation:
    """A fixed, seeded set of validation tiles, read once."""
    images, labels = [], []
    for _ in range(config.val_tiles):
        region = pick_region(regions, rng)
        image, valid, target = read_sample(
            pairs[region.pair],
            sample_box(region, config.tile, rng),
            tile=config.tile,
            classes=card.num_classes,
        )
        images.append(normalize(image, valid, card))
        labels.append(target)
    return Validation(np.stack(images), np.stack(labels))


@torch.inference_mode()
def evaluate(
    model: nn.Module, validation: Validation, card: ModelCard, *, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """Per-class Dice and IoU, their means, and pixel accuracy on the validation tiles."""
    model.eval()
    k = card.num_classes
    matrix = np.zeros((k, k), np.int64)
    for i in range(0, len(validation.images), batch_size):
        x = torch.from_numpy(validation.images[i : i + batch_size]).to(device)
        with _autocast(device):
            predicted = model(x).argmax(dim=1).cpu().numpy()
        matrix += confusion(predicted, validation.labels[i : i + batch_size], k)
    return scores(matrix, card.classes)


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """``matrix[true, predicted]`` pixel counts over labelled pixels."""
    keep = labels != IGNORE
    index = labels[keep] * classes + predicted[keep]
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def scores(matrix: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)`` per class.

    A class absent from both the labels and the predictions has no score (None)
    and does not count in the means.
    """
    tp = np.diag(matrix).astype(np.float64)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    present = (tp + fp + fn) > 0
    dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
    return {
        "val_dice": _per_class(dice, classes),
        "val_iou": _per_class(iou, classes),
        "val_mean_dice": round(float(np.nanmean(dice)), 4) if present.any() else 0.0,
        "val_mean_iou": round(float(np.nanmean(iou)), 4) if present.any() else 0.0,
        "val_pixel_accuracy": round(float(tp.sum() / max(matrix.sum(), 1)), 4),
        "val_pixels": {name: int(n) for name, n in zip(classes, matrix.sum(1), strict=True)},
    }


def _per_class(values: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    return {name: None if np.isnan(v) else round(float(v), 4) for name, v in zip(classes, values, strict=True)}


def epoch_line(record: dict[str, Any], epochs: int, classes: list[str]) -> str:
    """``epoch 3/10: loss 0.412, val dice 0.871 (water 0.95, ...), iou 0.80, acc 0.93, 12.3 s``."""
    per_class = ", ".join(
        f"{name} {'-' if record['val_dice'][name] is None else format(record['val_dice'][name], '.3f')}"
        for name in classes
    )
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f}, "
        f"val dice {record['val_mean_dice']:.3f} ({per_class}), iou {record['val_mean_iou']:.3f}, "
        f"acc {record['val_pixel_accuracy']:.3f}, {record['seconds']:.1f} s"
    )


def training_summary(
    pairs: list[Pair],
    train_regions: list[Region],
    val_regions: list[Region],
    config: TrainConfig,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the card says about the training data and procedure."""
    used = sorted({r.pair for r in train_regions} | {r.pair for r in val_regions})
    return {
        "data": [
            {"image": str(getattr(pairs[i].image, "path", "array")), "shape": list(pairs[i].image.shape)} for i in used
        ],
        "train_pixels": int(sum(r.box.size for r in train_regions)),
        "val_pixels": int(sum(r.box.size for r in val_regions)),
        "val_split": "separate pairs"
        if {r.pair for r in val_regions} - {r.pair for r in train_regions}
        else f"last {config.val_fraction:.0%} of each scene along its first axis",
        "val_tiles": config.val_tiles,
        "tile": config.tile,
        "batch_size": config.batch_size,
        "epochs": len(history),
        "steps_per_epoch": config.steps,
        "tiles_seen": len(history) * config.steps * config.batch_size,
        "optimizer": f"AdamW lr {config.lr} (warm-up, cosine), weight decay {config.weight_decay}",
        "loss": f"cross-entropy + {config.dice_weight} x soft Dice",
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
    size = min(2 * card.tile, 512 if card.spatial_dims == 2 else 96)
    card.receptive_field = card.receptive_field or receptive_field(model, card, size=size)
    save_checkpoint(out, model, card, half=half)
    return card
