"""Regenerate every paper figure from a saved report run, as PDF and PNG in one style.

    lens-memory report --model gemma-3-270m --out out/report      # once (cached, resumable)
    python analyses/make_figures.py --run out/report --out figures

Prints a table of the figures written and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lens_memory.report.figures import regenerate_figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("out/report"), help="a `lens-memory report --out` directory")
    ap.add_argument("--out", type=Path, default=Path("figures"), help="where the figures go")
    args = ap.parse_args(argv)
    t0 = time.time()
    files = regenerate_figures(args.run, args.out)
    stems = sorted({p.stem for p in files})
    print(f"{'figure':40s} formats")
    for s in stems:
        print(f"{s:40s} {', '.join(sorted(p.suffix[1:] for p in files if p.stem == s))}")
    print(json.dumps({"run": str(args.run), "out": str(args.out), "n_figures": len(stems), "n_files": len(files),
                      "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
