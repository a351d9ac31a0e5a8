"""The NIfTI header as a value object: what a mask must carry to overlay its image.

A mask overlays its image without resampling when its header says the same
thing about space as the image's: the same dims, pixdim, units, sform and qform
with their codes. Viewers disagree about which transform to prefer (nibabel
takes the sform when its code is set; ITK may take the qform), so the only safe
mask header is a copy of the image's, with just the data type, scaling and
intent changed. :class:`NiftiRef` keeps the image's binary header for that copy,
next to the readable fields a user or another tool looks for.
"""

from __future__ import annotations

import base64
import warnings
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header

from gigaseg.errors import SourceError
from gigaseg.io.geotiff import GigasegWarning

# Millimetres per NIfTI spatial unit; "unknown" is read as millimetres, as viewers do.
MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


@dataclass(frozen=True)
class NiftiRef:
    """An image's NIfTI header, and the affine gigaseg uses for it.

    ``affine`` maps voxel indices ``(i, j, k)`` to world millimetres;
    ``affine_source`` says where it came from: ``sform``, ``qform`` or ``pixdim``
    (voxel sizes alone, when neither transform is usable).
    """

    header: bytes
    version: int
    affine: tuple[tuple[float, ...], ...]
    affine_source: str

    @classmethod
    def from_header(cls, header: Nifti1Header, *, name: str) -> NiftiRef:
        header = _native(header)
        affine, source = effective_affine(header, name=name)
        version = 2 if isinstance(header, Nifti2Header) else 1
        rows = tuple(tuple(float(v) for v in row) for row in affine)
        return cls(header.binaryblock, version, rows, source)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> NiftiRef:
        affine = tuple(tuple(float(v) for v in row) for row in attrs["affine"])
        raw = base64.b64decode(attrs["header"])
        return cls(raw, int(attrs["version"]), affine, str(attrs["affine_source"]))

    def image_header(self) -> Nifti1Header:
        """A fresh copy of the image's header."""
        klass = Nifti2Header if self.version == 2 else Nifti1Header
        return klass(binaryblock=self.header, check=False)

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self.affine, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's data shape, as nibabel reports it (i, j, k, ...)."""
        return tuple(int(n) for n in self.image_header().get_data_shape())

    @property
    def voxel_sizes(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in the file's units (lengths of the affine's columns)."""
        sizes = np.sqrt((self.matrix[:3, :3] ** 2).sum(axis=0))
        return float(sizes[0]), float(sizes[1]), float(sizes[2])

    @property
    def mm_per_unit(self) -> float:
        return MM_PER_UNIT.get(self.image_header().get_xyzt_units()[0], 1.0)

    @property
    def orientation(self) -> str:
        """Axis codes of i, j, k, such as ``RAS`` or ``LPS``."""
        return "".join(nib.aff2axcodes(self.matrix))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready fields: the exact header plus what a reader looks for first."""
        hdr = self.image_header()
        return {
            "version": self.version,
            "header": base64.b64encode(self.header).decode("ascii"),
            "affine": [list(row) for row in self.affine],
            "affine_source": self.affine_source,
            "sform": hdr.get_sform().tolist(),
            "sform_code": int(hdr["sform_code"]),
            "qform": _qform(hdr).tolist(),
            "qform_code": int(hdr["qform_code"]),
            "pixdim": [float(v) for v in hdr["pixdim"]],
            "dim": [int(v) for v in hdr["dim"]],
            "xyzt_units": list(hdr.get_xyzt_units()),
            "datatype": str(hdr.get_data_dtype()),
            "voxel_sizes": list(self.voxel_sizes),
            "orientation": self.orientation,
            "axes": ["k", "j", "i"],
        }

    def mask_header(self, dtype: np.dtype) -> Nifti1Header:
        """The image's header for a label mask of ``dtype``: only type, shape and scaling change.

        The mask keeps the image's first three dimensions (a 4-D image gives a
        3-D mask) and every spatial field: sform and qform with their codes,
        pixdim (qfac included), units. Scaling is the identity (scl_slope 1,
        scl_inter 0), the intent is NIFTI_INTENT_LABEL and the display range unset.
        """
        hdr = self.image_header()
        pixdim = hdr["pixdim"].copy()
        shape = self.shape
        hdr.set_data_shape(shape[: min(len(shape), 3)])
        hdr["pixdim"] = pixdim
        hdr.set_data_dtype(dtype)
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
        hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
        hdr.set_intent("label", (), name="gigaseg")
        hdr["descrip"] = b"gigaseg mask"
        hdr["vox_offset"] = 0  # no extensions: nibabel sets the smallest offset on writing
        return hdr


def _native(header: Nifti1Header) -> Nifti1Header:
    if header.endianness != nib.volumeutils.native_code:
        return header.as_byteswapped(nib.volumeutils.native_code)
    return header.copy()


def _qform(header: Nifti1Header) -> np.ndarray:
    try:
        return header.get_qform()
    except ValueError:  # quaternion b, c, d of length > 1: no rotation exists
        return np.full((4, 4), np.nan)


def is_usable(affine: np.ndarray) -> bool:
    """Finite and far from singular (smallest singular value above 1e-6 of the largest)."""
    if not np.isfinite(affine).all():
        return False
    values = np.linalg.svd(affine[:3, :3], compute_uv=False)
    return bool(values[0] > 0 and values[-1] > 1e-6 * values[0])


def effective_affine(header: Nifti1Header, *, name: str) -> tuple[np.ndarray, str]:
    """The sform if its code is set and it is usable, else the qform, else voxel sizes.

    This is nibabel's order of preference; a set but zero or singular transform
    is skipped with a warning that says which one is used instead.
    """
    skipped: list[str] = []
    for kind in ("sform", "qform"):
        if int(header[f"{kind}_code"]) == 0:
            continue
        matrix = header.get_sform() if kind == "sform" else _qform(header)
        if is_usable(matrix):
            _warn_skipped(skipped, kind, name)
            return matrix, kind
        skipped.append(kind)
    zooms = [float(z) if np.isfinite(z) and z > 0 else 1.0 for z in header.get_zooms()[:3]]
    zooms += [1.0] * (3 - len(zooms))
    reason = " and ".join(f"the {k} is zero or singular" for k in skipped) or "neither sform nor qform is set"
    warnings.warn(
        f"{name}: {reason}; using the voxel sizes {zooms} without rotation or origin",
        GigasegWarning,
        stacklevel=3,
    )
    return np.diag([*zooms, 1.0]), "pixdim"


def _warn_skipped(skipped: list[str], used: str, name: str) -> None:
    if skipped:
        warnings.warn(
            f"{name}: the {skipped[0]} is zero or singular; using the {used} instead",
            GigasegWarning,
            stacklevel=4,
        )


def check_header(header: Any, *, name: str) -> Nifti1Header:
    """Refuse headers gigaseg cannot read voxels through (not NIfTI, odd types, bad scaling)."""
    if not isinstance(header, Nifti1Header):
        raise SourceError(f"{name} is not a NIfTI-1 or NIfTI-2 image but {type(header).__name__}")
    dtype = header.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.fields:
        raise SourceError(f"{name} holds {dtype} voxels; gigaseg reads integer and float volumes")
    try:
        header.get_slope_inter()
    except nib.spatialimages.HeaderDataError as e:
        raise SourceError(f"{name} has invalid scaling (scl_slope/scl_inter): {e}") from None
    return header
