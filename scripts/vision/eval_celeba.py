"""Alias: ``python scripts/vision/evaluate.py --family ldm ...`` (LDM-CelebA); see that script."""

import runpy
import sys
from pathlib import Path


def main(argv=None) -> int:
    ev = runpy.run_path(str(Path(__file__).with_name("evaluate.py")), run_name="vision_evaluate")
    return ev["main"](["--family", "ldm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
