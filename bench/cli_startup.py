"""How long ``gapvision --help`` takes, beside ``python -c pass`` (the interpreter's own start-up), measured side by
side (interleaved) in fresh processes; the target is under 0.3 s.

    python bench/cli_startup.py               # 15 repeats of each
    python bench/cli_startup.py --repeats 30 --args train --help

Medians are printed with the difference (what gapvision itself costs) and whether torch was imported.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_S = 0.3


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--args", nargs=argparse.REMAINDER, default=["--help"], help="gapvision arguments (default --help)")
    a = p.parse_args()
    cli = [sys.executable, "-m", "gapvision", *a.args]
    bare = [sys.executable, "-c", "pass"]
    timed(cli)  # warm the file cache
    cli_t, bare_t = [], []
    for _ in range(a.repeats):
        cli_t.append(timed(cli))
        bare_t.append(timed(bare))
    probe = subprocess.run([sys.executable, "-c", "import sys, gapvision.cli as c; c.build_parser(); "
                            "print('torch' in sys.modules)"], capture_output=True, text=True, check=True)
    c, b = statistics.median(cli_t), statistics.median(bare_t)
    print(f"gapvision {' '.join(a.args)}: {c:.3f} s (median of {a.repeats}); python -c pass: {b:.3f} s; "
          f"gapvision's own share {c - b:.3f} s; torch imported: {probe.stdout.strip()}; "
          f"target < {TARGET_S} s: {'met' if c < TARGET_S else 'NOT met'}")


if __name__ == "__main__":
    main()
