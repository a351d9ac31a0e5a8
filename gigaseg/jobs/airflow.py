"""Airflow 3 provider: ``from gigaseg.jobs.airflow import SegmentOperator``.

Airflow reads :func:`get_provider_info` (the ``apache_airflow_provider`` entry
point) while its own configuration is still loading, so this module must not
import Airflow at import time: the operator and trigger live in
``gigaseg.jobs._airflow_impl`` and are loaded on first use.
"""

from __future__ import annotations

from typing import Any

import gigaseg

LAZY = ("SegmentOperator", "JobReportTrigger")


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "gigaseg",
        "name": "gigaseg",
        "description": "Segment huge GeoTIFFs and NIfTI volumes on Dask, SLURM or locally.",
        "versions": [gigaseg.__version__],
    }


def __getattr__(name: str) -> Any:
    if name in LAZY:
        from gigaseg.jobs import _airflow_impl

        return getattr(_airflow_impl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
