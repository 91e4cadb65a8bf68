"""Plot a run's training curves: ``python scripts/plot_curves.py RUN_DIR [OUT.png]``.

Reads ``RUN_DIR/tensorboard`` and writes loss, validation BLEU and learning rate over steps
(default: ``RUN_DIR/curves.png``).
"""

import sys
from pathlib import Path

from mt.plots.curves import plot_curves


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    out = Path(argv[1]) if len(argv) == 2 else run_dir / "curves.png"
    try:
        path = plot_curves(run_dir / "tensorboard", out, title=run_dir.resolve().name)
    except (ValueError, OSError) as err:  # a missing run folder, an unwritable OUT.png
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
