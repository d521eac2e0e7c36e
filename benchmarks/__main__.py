"""`python -m benchmarks` (`make bench`): every benchmark module below with its default settings.

Each module also runs alone with flags to extend it, e.g. `python -m benchmarks.throughput --steps 60`.
benchmarks/time_to_accuracy.py trains to a target accuracy (minutes to hours) and benchmarks/pack.py
packs 50,000 photos (a quarter of an hour); they are not in this list.
"""

from __future__ import annotations

import importlib
import time

MODULES = [
    "benchmarks.throughput",
    "benchmarks.inference",
    "benchmarks.pipeline",
    "benchmarks.first_batch",
    "benchmarks.decode_accuracy",
    "benchmarks.gpu",
    "benchmarks.ddp",
]


def main() -> int:
    for name in MODULES:
        start = time.perf_counter()
        print(f"== {name}")
        status = importlib.import_module(name).main([])
        print(f"== {name}: {time.perf_counter() - start:.0f} s\n")
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
