"""``python -m bench``: generate the inputs, run the cases, print the table of ratios.

    python -m bench                  # every case at full size (about an hour on 2 cores)
    python -m bench --cases 1,2      # some cases
    python -m bench --quick          # tiny sizes: a smoke run of every case (< 1 min)

Inputs are generated once into ``bench/out/data`` (or ``$GIGASEG_BENCH_DATA``,
or ``--data``) and reused; every measurement runs in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.cases import CASES, Context, Row, Settings

HEADER = ["case", "measure", "value", "target", "met", "note"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated case numbers [all of the device's]")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu: cases 1-10, 16, 17; cuda: the GPU cases 11-15, 18 (bench/gpu.py, bench/gpu.sh)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per engine (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every engine")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="where generated inputs are kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(quick=args.quick, repeats=1 if args.quick else 2)
    if args.data:
        s = replace(s, data=args.data, out=args.data.parent / "runs")
    if args.quick:
        s = replace(s, data=s.data / "quick", out=s.out / "quick")
    given = {"repeats": args.repeats, "threads": args.threads, "batch_size": args.batch_size}
    return replace(s, device=device_of(args), **{k: v for k, v in given.items() if v is not None})


def device_of(args: argparse.Namespace) -> str:
    """The device the cases run on; ``--device cuda --quick`` without a GPU dry-runs on the CPU."""
    import torch

    if not args.device.startswith("cuda") or torch.cuda.is_available():
        return args.device
    if args.quick:
        print("no CUDA device: the GPU cases run on the CPU at tiny sizes (a dry run, no GPU numbers)", flush=True)
        return "cpu"
    raise SystemExit("python -m bench: error: --device cuda needs a CUDA device (add --quick for a dry run on the CPU)")


def case_table(device: str) -> dict[int, Any]:
    from bench.gpu import GPU_CASES

    return GPU_CASES if device.startswith("cuda") else CASES


def run(
    settings: Settings,
    cases: list[int],
    table_of_cases: dict[int, Any] = CASES,
    *,
    save: Path | None = None,
) -> list[Row]:
    """Run the cases in order; with ``save`` the rows so far are written after each case."""
    ctx = Context(settings)
    rows: list[Row] = []
    for number in cases:
        started = time.perf_counter()
        found = table_of_cases[number](ctx)
        print(f"case {number}: {time.perf_counter() - started:.0f} s", flush=True)
        print(table(found), flush=True)
        rows += found
        if save:
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_text(json.dumps({"machine": machine(), "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


def table(rows: list[Row]) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    import numpy
    import psutil
    import torch

    import gigaseg

    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(psutil.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "gigaseg": gigaseg.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    gpu = args.device.startswith("cuda")
    known = case_table(args.device if gpu else "cpu")
    cases = [int(c) for c in args.cases.split(",") if c.strip()] if args.cases else list(known)
    unknown = [c for c in cases if c not in known]
    if unknown:
        raise SystemExit(f"python -m bench: error: unknown cases {unknown}; cases are {sorted(known)}")
    settings = settings_from(args)
    print(" ".join(f"{k}={v}" for k, v in machine().items()), flush=True)
    rows = run(settings, cases, known, save=args.json)
    print("\nall cases:\n" + table(rows))
    missed = [r for r in rows if r.met is False]
    return 1 if missed else 0
