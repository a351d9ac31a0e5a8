"""Run one measurement in this process and print its result as one JSON line.

    python -m bench.worker '{"engine": "monai", "threads": 2, "params": {...}}'

A fresh process per measurement makes its peak RSS the engine's own: it is
read from ``VmHWM`` in ``/proc/self/status``, which starts anew at ``exec``
(``ru_maxrss`` does not: Linux carries the parent's peak into the child).
With ``memory_limit_mb`` the address space is capped first, so a peer that
needs more memory than that fails here with ``"error": "out of memory"``
instead of pushing the machine into swap.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    limit = request.get("memory_limit_mb")
    if limit:
        cap = int(limit) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    from bench.engines import ENGINES
    from gigaseg.cpu import keep_freed_memory

    torch.set_num_threads(int(request["threads"]))
    keep_freed_memory()  # every engine gets the malloc settings gigaseg's predictor uses
    try:
        result = ENGINES[request["engine"]](**request["params"])
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        result = {"error": "out of memory", "detail": str(e).splitlines()[0][:200]}
    except Exception:  # the parent prints the traceback's last line in its table
        traceback.print_exc()
        result = {"error": traceback.format_exc().strip().splitlines()[-1][:300]}
    result["peak_rss_mb"] = peak_rss_mb()
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "can't allocate" in text or "out of memory" in text


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
