"""Click helpers shared by the commands: value parsers and the ``--refine`` options.

The refinement options serve both ``gigaseg segment --refine`` and ``gigaseg refine``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from gigaseg.refine import REFINERS, RefineOptions


def parse_bands(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter(f"bands must be comma-separated numbers, got {value!r}") from None


def parse_volume(value: str | None) -> int | str | None:
    if value is None or value == "channels":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"volume must be a number or 'channels', got {value!r}") from None


def parse_json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"must be a JSON object such as '{{\"encoder_depth\": 3}}', got {value!r}")
    return parsed


def parse_numbers(value: str, name: str, *, count: int) -> list[float]:
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise click.BadParameter(f"{name} must be {count} comma-separated numbers, got {value!r}")
    return numbers


# (option, keyword, type, help); None defaults mean "the method's default for 2-D or 3-D".
PARAMETER_OPTIONS = [
    ("--crf-iterations", "crf_iterations", int, "Mean-field iterations [10; volumes 5]."),
    (
        "--crf-sxy",
        "crf_sxy",
        float,
        "Bilateral kernel's spatial width theta_alpha, pixels [121; volumes 10].",
    ),
    (
        "--crf-srgb",
        "crf_srgb",
        float,
        "Bilateral kernel's colour width theta_beta, 0-255 scale [5; volumes 13].",
    ),
    ("--crf-bilateral-weight", "crf_bilateral_weight", float, "Bilateral kernel's weight w1 [4; volumes 5]."),
    ("--crf-gaussian-sxy", "crf_gaussian_sxy", float, "Smoothness kernel's width theta_gamma, pixels [3]."),
    ("--crf-gaussian-weight", "crf_gaussian_weight", float, "Smoothness kernel's weight w2 [3]."),
    ("--crf-window", "crf_window", int, "crf-torch: cells each side of a cell's window [24; volumes 4]."),
    ("--superpixel-size", "superpixel_size", float, "Superpixel side in pixels [20]."),
    ("--superpixel-compactness", "superpixel_compactness", float, "SLIC compactness [0.3]."),
]
PREFIXES = {"crf": "crf_", "crf-torch": "crf_", "superpixel": "superpixel_"}
METHODS = click.Choice(sorted(REFINERS))


def refine_options(command: Callable) -> Callable:
    """Add the refinement parameters to a click command (innermost first)."""
    decorators = [
        click.option(flag, name, type=kind, default=None, help=text) for flag, name, kind, text in PARAMETER_OPTIONS
    ]
    decorators += [
        click.option("--superpixel-vote", type=click.Choice(["mean", "majority"]), default=None, help="Vote [mean]."),
        click.option("--feature-bands", default=None, help="Bands of the CRF's feature image, 1-based: 4,3,2."),
        click.option(
            "--stretch", default="2,98", show_default=True, help="Percentiles mapped onto 0-255 for features."
        ),
        click.option("--refine-block", type=int, default=None, help="Refinement block side [2048; 3-D 128]."),
        click.option("--refine-halo", type=int, default=None, help="Halo in pixels [3 x widest kernel]."),
        click.option("--refine-workers", type=int, default=None, help="Worker processes [one per core]."),
    ]
    for decorate in decorators:
        command = decorate(command)
    return command


def refine_from(method: str | None, kw: dict[str, Any]) -> RefineOptions | None:
    """Pop the refinement keywords from ``kw``; options for ``method`` (None: no refinement)."""
    names = [name for _, name, _, _ in PARAMETER_OPTIONS] + ["superpixel_vote"]
    values = {name: kw.pop(name) for name in names}
    common = {k: kw.pop(k) for k in ("feature_bands", "stretch", "refine_block", "refine_halo", "refine_workers")}
    if method is None:
        return None
    prefix = PREFIXES[method]
    params = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix) and v is not None}
    return RefineOptions(
        method=method,
        params=params,
        feature_bands=_number_list(common["feature_bands"], int, "--feature-bands"),
        percentiles=_percentiles(common["stretch"]),
        block=common["refine_block"],
        halo=common["refine_halo"],
        workers=common["refine_workers"],
        progress=sys.stderr.isatty(),
    )


def _percentiles(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"--stretch must be two comma-separated numbers, got {text!r}") from None
    return low, high


def _number_list(text: str | None, kind: type, flag: str) -> list | None:
    if not text:
        return None
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{flag} must be comma-separated numbers, got {text!r}") from None
