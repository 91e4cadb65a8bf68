"""Average checkpoints: ``python scripts/average_checkpoints.py OUT.pt IN1.pt IN2.pt ...``.

Writes a checkpoint whose weights are the mean of the inputs' (e.g. the last N ``step_*.pt`` of
a run trained with ``train.keep_last=N``); use it with evaluate.py / translate.py. The inputs
must come from one training run; ``--other-runs`` (before OUT.pt) averages across runs anyway.
"""

import sys

from mt.checkpoint import average_checkpoints, save_checkpoint


def main(argv: list[str]) -> int:
    other_runs = "--other-runs" in argv
    argv = [a for a in argv if a != "--other-runs"]
    if len(argv) < 2 or any(a.startswith("-") for a in argv):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out, inputs = argv[0], argv[1:]
    try:
        save_checkpoint(out, average_checkpoints(inputs, other_runs=other_runs))
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"averaged {len(inputs)} checkpoints into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
