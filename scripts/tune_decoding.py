"""Choose decoding settings on validation data::

    python scripts/tune_decoding.py checkpoint=PATH beam_sizes=[1,5,8] length_penalties=[0.6,1.0]

Prints BLEU for each beam size and length penalty on the validation split, and the best pair to
pass as ``decode.beam_size`` / ``decode.length_penalty`` (training) or ``beam_size`` /
``length_penalty`` (evaluate, translate).
"""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra
from mt.decoding.evaluation import tune_decoding

register_configs()


def main(cfg: DictConfig) -> None:
    with user_errors():
        result = tune_decoding(from_hydra(cfg), HydraConfig.get().runtime.output_dir)
    print(f"{'beam':>4}  {'length penalty':>14}  {'BLEU':>6}  {'chrF':>6}  seconds")
    for row in result["table"]:
        lp = "-" if row["length_penalty"] is None else f"{row['length_penalty']:g}"
        print(
            f"{row['beam_size']:>4}  {lp:>14}  {row['bleu']:>6.2f}  {row['chrf']:>6.2f}  "
            f"{row['seconds']}"
        )
    best = result["best"]
    print(
        f"best on {result['split']}: beam_size={best['beam_size']} "
        f"length_penalty={best['length_penalty']} (BLEU {best['bleu']:.2f})"
    )


if __name__ == "__main__":
    run_script(main, __file__, "tune_decoding")
