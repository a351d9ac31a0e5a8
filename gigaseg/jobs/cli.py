"""The ``gigaseg`` command line: parse, call one library function, print.

Errors a user can act on (:class:`GigasegError`) end as one line on stderr and
exit code 2; warnings about odd but valid input print as one line each.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from gigaseg.errors import GigasegError, InputError
from gigaseg.jobs.cli_refine import METHODS, refine, refine_from, refine_options

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 70
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.echo(f"gigaseg: warning: {message}", err=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail again (Python's note on SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: no descriptor (a test runner's buffer)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class GigasegGroup(click.Group):
    """Turn every user error into one line on stderr, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except GigasegError as e:
            click.echo(f"gigaseg: error: {e}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("gigaseg: interrupted; rerun with --resume to finish", err=True)
            sys.exit(130)
        except BrokenPipeError:  # stdout's reader left (`gigaseg info S | head -1`): end quietly
            _silence_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"gigaseg: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)


@click.group(cls=GigasegGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(package_name="gigaseg")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Segment scenes too big for memory: GeoTIFF or NIfTI in, georeferenced Zarr mask out."""
    ctx.obj = {"debug": debug}


def _bands(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter(f"bands must be comma-separated numbers, got {value!r}") from None


def _volume(value: str | None) -> int | str | None:
    if value is None or value == "channels":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"volume must be a number or 'channels', got {value!r}") from None


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint file (.pt) with its model card.",
)
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="Output Zarr store.")
@click.option("--tile", default=None, help="Tile side in pixels (512) or metres (5120m).")
@click.option("--overlap", default=None, help="Tile overlap in pixels (64) or metres (640m).")
@click.option("--blend", type=click.Choice(["gaussian", "cosine", "constant"]), default="gaussian", show_default=True)
@click.option(
    "--merge",
    type=click.Choice(["probs", "logits"]),
    default="probs",
    show_default=True,
    help="Blend softmax probabilities or raw logits.",
)
@click.option("--bands", default=None, help="Input bands to use, 1-based: 4,3,2.")
@click.option(
    "--nodata-rule",
    type=click.Choice(["all-bands", "any-band"]),
    default="all-bands",
    show_default=True,
    help="A pixel is nodata where all selected bands hold the nodata value (GDAL's mask), or any one.",
)
@click.option("--block", type=int, default=None, help="Largest output block side [16384; volumes 512].")
@click.option("--chunk", type=int, default=None, help="Output chunk side [512; volumes 64].")
@click.option("--batch-size", type=int, default=None, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option(
    "--probabilities",
    type=click.Choice(["float32", "float16", "uint8"]),
    default=None,
    help="Also store per-class probabilities.",
)
@click.option(
    "--zarr-format",
    type=click.Choice(["2", "3"]),
    default="2",
    show_default=True,
    help="2 is what GDAL 3.10 reads.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output store.")
@click.option("--resume", is_flag=True, help="Finish an interrupted output store.")
@click.option("--volume", default=None, help="NIfTI 4-D: a volume number (0-based), or 'channels' for all.")
@click.option("--slice-axis", type=int, default=None, help="Run a 2-D model slice by slice along i=0, j=1, k=2.")
@click.option("--context", type=int, default=0, show_default=True, help="2.5-D: slices on each side as channels.")
@click.option("--canonical", is_flag=True, help="Show the model the volume reoriented to RAS.")
@click.option(
    "--cache",
    "cache_dir",
    default=None,
    type=click.Path(path_type=str),
    help="Where .nii.gz volumes are decompressed [$GIGASEG_CACHE or the temp dir].",
)
@click.option(
    "--cache-max",
    default=None,
    help="Bound of that cache (e.g. 20GiB) [50GiB]; the least recently used copies go first.",
)
@click.option("--refine", "refine_method", type=METHODS, default=None, help="Refine the labels (see gigaseg refine).")
@refine_options
@click.option("--tta", is_flag=True, help="Average the scores of all flips of each tile (4x the work in 2-D).")
@click.option("--deterministic", is_flag=True, help="CUDA: deterministic kernels, bit-identical GPU runs.")
@click.option(
    "--readers", type=click.IntRange(min=1), default=None, help="Reader threads [1 on CPU; up to 8 for a GPU]."
)
@click.option(
    "--band-memory",
    default=None,
    help="Budget of the stitcher's band (e.g. 4GiB, the default); blocks narrow to fit many classes.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and the memory it will take; run nothing.")
@click.option(
    "--card",
    "card_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Model card (JSON) for a plain smp/MONAI state_dict trained elsewhere.",
)
def segment(
    input_path: Path,
    model_path: Path,
    output: Path,
    refine_method: str | None,
    card_path: Path | None,
    dry_run: bool,
    **kw: Any,
) -> None:
    """Segment INPUT (a GeoTIFF or any GDAL raster, or a NIfTI volume) into a Zarr mask."""
    from gigaseg.jobs.segment import SegmentOptions
    from gigaseg.jobs.segment import segment as run
    from gigaseg.models.card import ModelCard

    if kw["overwrite"] and kw["resume"]:
        raise click.BadParameter("--overwrite and --resume exclude each other")
    card = ModelCard.from_json(card_path) if card_path else None
    options = SegmentOptions(
        refine=refine_from(refine_method, kw),
        **{
            **kw,
            "bands": _bands(kw["bands"]),
            "volume": _volume(kw["volume"]),
            "zarr_format": int(kw["zarr_format"]),
            "progress": sys.stderr.isatty(),
        },
    )
    if dry_run:
        from gigaseg.jobs.plan import describe_scene
        from gigaseg.jobs.segment import SceneSpec

        spec = SceneSpec(str(input_path), str(model_path), str(output), options, card.to_dict() if card else None)
        click.echo(describe_scene(spec))
        return
    summary = run(input_path, model_path, output, options, card=card)
    click.echo(summary.line())


@cli.command("init-model")
@click.option("--arch", default="unet", show_default=True)
@click.option("--encoder", default=None, help="Encoder of smp architectures [default: resnet18].")
@click.option("--in-channels", type=int, default=3, show_default=True)
@click.option("--classes", default="4", show_default=True, help="A number of classes, or comma-separated class names.")
@click.option("--tile", type=int, default=512, show_default=True)
@click.option("--overlap", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "output", required=True, type=click.Path(path_type=Path))
def init_model(output: Path, **kw: Any) -> None:
    """Write a seeded, untrained checkpoint (for tests and benchmarks)."""
    from gigaseg.models.checkpoint import init_checkpoint

    classes = kw.pop("classes")
    names = [f"class{i}" for i in range(int(classes))] if classes.isdigit() else classes.split(",")
    card = init_checkpoint(output, classes=names, **kw)
    encoder = f" ({card.encoder})" if card.encoder else ""
    click.echo(f"{output}: untrained {card.arch}{encoder}, {card.in_channels} bands, {card.num_classes} classes")


@cli.command()
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.option("--verify", is_flag=True, help="Also check every chunk against its checksum (as gigaseg verify).")
def info(store_path: Path, as_json: bool, verify: bool) -> None:
    """Describe a mask store: shape, classes, georeferencing, progress."""
    from gigaseg.io.inspect import describe_store
    from gigaseg.io.store import verify_store

    record = describe_store(store_path)
    if verify:
        found = verify_store(store_path)
        record["verified"] = f"{found.checked} chunks match their checksums"
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for key, value in record.items():
        if key != "provenance":
            click.echo(f"{key}: {value}")
    if not record["complete"]:
        click.echo(f"gigaseg: warning: {store_path} is INCOMPLETE", err=True)


@cli.command()
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
def verify(store_path: Path) -> None:
    """Check every chunk of a mask store against the checksum recorded when it was written.

    Exit 0 when all match; otherwise one line naming the damage, exit 2
    (``gigaseg segment ... --resume`` writes damaged blocks again).
    """
    from gigaseg.io.store import open_store, verify_store

    found = verify_store(store_path)
    done = open_store(store_path).done()
    pending = "" if done.all() else f"; INCOMPLETE: {int(done.sum())} of {done.size} blocks written"
    click.echo(f"{store_path}: {found.checked} chunks match their checksums{pending}")


@cli.command()
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--allow-incomplete", is_flag=True, help="Export a store whose run never finished.")
def export(store_path: Path, output: Path, overwrite: bool, allow_incomplete: bool) -> None:
    """Export a mask store to a Cloud-Optimized GeoTIFF (.tif), or a volume's to NIfTI (.nii.gz)."""
    from gigaseg.io.export import export_mask

    export_mask(store_path, output, overwrite=overwrite, allow_incomplete=allow_incomplete)
    click.echo(f"{output}: written")


@cli.command()
@click.argument("store_path", metavar="STORE", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    "reference",
    required=True,
    type=click.Path(path_type=Path),
    help="Reference: a raster of class labels, or points/polygons (.gpkg, .geojson, .shp, ...).",
)
@click.option(
    "--label-offset", type=int, default=0, show_default=True, help="Reference value v is class v - N (1-based: 1)."
)
@click.option("--ignore-value", default=None, help="A reference value (or class name) to leave out, besides nodata.")
@click.option("--attribute", default=None, help="Class column of vector labels [the one named class or label].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Also draw the confusion matrix (PNG).")
def evaluate(store_path: Path, reference: Path, as_json: bool, plot: Path | None, **kw: Any) -> None:
    """Score a finished mask against reference labels: per-class precision, recall, F1, IoU; accuracy, kappa."""
    from gigaseg.jobs.evaluate import evaluate_store, plot_confusion

    result = evaluate_store(store_path, reference, **kw)
    if plot is not None:
        plot_confusion(result, plot)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.table())


@cli.command()
@click.option(
    "--out",
    "output",
    type=click.Path(path_type=Path),
    default=Path("gigaseg-demo"),
    show_default=True,
    help="Directory for the scene, the model and the mask.",
)
@click.option("--size", type=int, default=2048, show_default=True, help="Scene side in pixels.")
@click.option("--device", default="auto", show_default=True)
def demo(output: Path, size: int, device: str) -> None:
    """Generate a georeferenced scene and segment it with the bundled model."""
    from gigaseg.jobs.demo import run_demo

    summary = run_demo(output, size=size, device=device, progress=sys.stderr.isatty())
    click.echo(summary.line())
    click.echo(f"mask: {summary.output}  (try: gigaseg info {summary.output})")


@cli.command("run")
@click.argument("job_path", metavar="JOB", type=click.Path(path_type=Path))
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.option("--workers", type=int, default=None, help="Local workers (default: one per GPU, else per 2 cores).")
@click.option("--slurm", is_flag=True, help="Run the workers as SLURM jobs (dask-jobqueue).")
@click.option("--slurm-queue", default=None, help="SLURM partition.")
@click.option("--slurm-jobs", type=int, default=None, help="SLURM jobs, one Dask worker each.")
@click.option("--slurm-cores", type=int, default=None, help="Cores per SLURM job.")
@click.option("--slurm-memory", default=None, help="Memory per SLURM job, e.g. 16GB.")
@click.option("--slurm-walltime", default=None, help="Walltime per SLURM job, e.g. 02:00:00.")
@click.option("--slurm-gpus-per-job", type=int, default=None)
@click.option("--slurm-lifetime", default=None, help="Retire workers after this long (e.g. 50m); replaced.")
@click.option("--resume", is_flag=True, help="Redo only the blocks that are not finished.")
@click.option("--dry-run", is_flag=True, help="Print the plan and what exists; run nothing.")
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the run report here (written even when the run fails).",
)
def run_command(job_path: Path, resume: bool, dry_run: bool, report: Path | None, **kw: Any) -> None:
    """Run a job file (many scenes) on a Dask cluster."""
    if report is None:
        return _run_job(job_path, resume, dry_run, **kw)
    try:
        _run_job(job_path, resume, dry_run, report=report, **kw)
    except Exception as e:  # the report's reader (the Airflow trigger) must hear of any end
        from gigaseg.jobs.runner import write_error_report

        write_error_report(report, f"{type(e).__name__}: {e}")
        raise


def _run_job(job_path: Path, resume: bool, dry_run: bool, *, report: Path | None = None, **kw: Any) -> None:
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.runner import plan_lines, run_job, write_report

    job = load_job(job_path)
    base = job_path.absolute().parent
    if dry_run:
        lines, failing = plan_lines(job, base=base, resume=resume)
        for line in lines:
            click.echo(line)
        if failing:
            raise InputError(f"{failing} of {len(lines)} scenes would fail (FAILS above); fix or drop those inputs")
        return
    result = run_job(
        job,
        base=base,
        resume=resume,
        scheduler=kw["scheduler"],
        slurm=_slurm_settings(job, kw) if kw["slurm"] else None,
        workers=kw["workers"],
        progress=sys.stderr.isatty(),
    )
    if report is not None:
        write_report(result, report)
    click.echo(result.table())
    if not result.ok:
        sys.exit(1)


def _slurm_settings(job: Any, kw: dict[str, Any]) -> Any:
    from gigaseg.jobs.jobfile import Slurm

    given = {k.removeprefix("slurm_"): v for k, v in kw.items() if k.startswith("slurm_") and v is not None}
    return (job.cluster.slurm or Slurm()).model_copy(update=given)


@cli.command()
@click.argument("job_path", metavar="JOB", type=click.Path(path_type=Path))
def status(job_path: Path) -> None:
    """Per-scene progress of a job, read from the output stores themselves."""
    from gigaseg.jobs.jobfile import load_job
    from gigaseg.jobs.plan import existing

    job = load_job(job_path)
    for spec in job.scenes(base=job_path.absolute().parent):
        click.echo(f"{spec.input} -> {spec.output}: {existing(spec.output)}")


cli.add_command(refine)


@cli.command("models")
def models_command() -> None:
    """List the architectures, with parameter counts for 3 bands (1 channel in 3-D), 4 classes."""
    from gigaseg.models.registry import describe_models

    rows = describe_models()
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'name':<{width}}  dims  {'parameters':>10}  about")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['dims']}-D   {r['parameters']:>10,}  {r['about']}")


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"must be a JSON object such as '{{\"encoder_depth\": 3}}', got {value!r}")
    return parsed


def _numbers(value: str, name: str, *, count: int) -> list[float]:
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise click.BadParameter(f"{name} must be {count} comma-separated numbers, got {value!r}")
    return numbers


@cli.command()
@click.option("--image", "images", multiple=True, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="One per --image: a raster of class indices, or vectors (.gpkg, .geojson, .shp).",
)
@click.option("--val-image", "val_images", multiple=True, type=click.Path(path_type=Path))
@click.option("--val-labels", multiple=True, type=click.Path(path_type=Path))
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="Best checkpoint (.pt).")
@click.option(
    "--classes",
    required=True,
    help="Comma-separated class names (label value --label-offset first), or a number of classes.",
)
@click.option("--colors", default=None, help="Comma-separated colours, one per class.")
@click.option("--arch", default="unet", show_default=True, help="See `gigaseg models`.")
@click.option("--encoder", default=None, help="smp encoder of 2-D archs (default resnet18).")
@click.option("--arch-kwargs", default="{}", help="JSON, e.g. '{\"encoder_depth\": 3}'.")
@click.option("--bands", default=None, help="Input bands to use, 1-based: 4,3,2.")
@click.option("--tile", type=int, default=256, show_default=True)
@click.option("--overlap", type=int, default=32, show_default=True, help="Recommended in the card.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True, help="Batches per epoch.")
@click.option(
    "--val-fraction", type=float, default=0.2, show_default=True, help="Share of the labelled pixels held out."
)
@click.option("--val-tiles", type=int, default=16, show_default=True, help="Validation blocks scored per epoch.")
@click.option("--val-block", type=int, default=None, help="Side of the split's blocks, px [min(tile, side/4)].")
@click.option(
    "--sampling",
    type=click.Choice(["auto", "uniform", "labelled", "balanced"]),
    default="auto",
    show_default=True,
    help="Training tiles: random, around labelled pixels, or balanced over classes (auto: by labelled share).",
)
@click.option("--class-weights", default=None, help="Cross-entropy class weights: balanced, or one number per class.")
@click.option("--label-offset", type=int, default=0, show_default=True, help="1 for labels 1..N (0 = unlabelled).")
@click.option("--ignore-index", type=int, default=None, help="Label value of unlabelled pixels, besides nodata.")
@click.option(
    "--label-attribute", default=None, help="Class attribute of vector labels (.gpkg, .geojson, .shp) [class/label]."
)
@click.option(
    "--encoder-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Local encoder state dict (timm/smp, .pt or .safetensors); never downloaded.",
)
@click.option("--clip", default=None, help="Intensity window low,high applied before mean/std (CT: -150,250).")
@click.option(
    "--candidates",
    type=int,
    default=1,
    show_default=True,
    help="Tiles drawn per sample; the one richest in rare classes is kept (small structures).",
)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--half", is_flag=True, help="Store the weights as float16.")
@click.option("--resume", is_flag=True, help="Continue from <out>.last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
def train(output: Path, images: tuple[Path, ...], labels: tuple[Path, ...], **kw: Any) -> None:
    """Train on (image, labels) rasters or volumes of any size, sampling random tiles."""
    from gigaseg.jobs.train import run_train, validation_table
    from gigaseg.models.training import TrainConfig

    classes, colors = kw.pop("classes"), kw.pop("colors")
    run = {k: kw.pop(k) for k in ("val_images", "val_labels", "resume", "overwrite")}
    bands = _bands(kw.pop("bands"))
    clip, weights = kw.pop("clip"), kw.pop("class_weights")
    if weights and weights != "balanced":
        weights = _numbers(weights, "class weights", count=len(weights.split(",")))
    config = TrainConfig(
        clip=_numbers(clip, "clip", count=2) if clip else None,
        class_weights=weights,
        classes=[f"class{i}" for i in range(int(classes))] if classes.isdigit() else classes.split(","),
        colors=colors.split(",") if colors else None,
        arch_kwargs=_json_object(kw.pop("arch_kwargs")),
        **kw,
    )
    progress = sys.stderr.isatty()
    result = run_train(list(images), list(labels), output, config, bands=bands, progress=progress, **run)
    metrics = result.card.metrics
    table = validation_table(result.card)
    if table:
        click.echo(table)
    click.echo(
        f"{output}: best epoch {metrics['epoch']}, val dice {metrics['val_mean_dice']:.3f}, "
        f"receptive field {result.card.receptive_field} px"
    )


def main() -> None:
    cli(prog_name="gigaseg")
