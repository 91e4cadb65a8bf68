"""Score a checkpoint: ``python scripts/evaluate.py checkpoint=PATH [split=test] [beam_size=5]``.

A multilingual model is scored on each direction it was trained on (and their mean), or on the
one that ``src_lang=de tgt_lang=fr`` names.

Prints detokenised, cased sacreBLEU BLEU and chrF with their signatures and writes the
translations to a file (``output=PATH``, or the run directory).
"""

import json

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra
from mt.decoding.evaluation import evaluate_checkpoint

register_configs()


def main(cfg: DictConfig) -> None:
    with user_errors():
        result = evaluate_checkpoint(from_hydra(cfg), HydraConfig.get().runtime.output_dir)
    print(json.dumps(result, indent=2))
    for direction, scores in result.get("directions", {}).items():
        print(f"BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} {direction}")
    mean = "(mean) " if "directions" in result else ""
    print(f"BLEU {result['bleu']:.2f} {mean}| {result['bleu_signature']}")
    print(f"chrF {result['chrf']:.2f} | {result['chrf_signature']}")


if __name__ == "__main__":
    run_script(main, __file__, "evaluate")
