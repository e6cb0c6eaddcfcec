"""`make bench`: run every benchmark module in bench/ and print its comparison."""

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    modules = [m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")]
    if not modules:
        print("No benchmarks yet: each bench/bench_<name>.py with a main() is run here.")
        return 0
    for name in sorted(modules):
        print(f"== {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
