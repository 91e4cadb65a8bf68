"""Train a translation model: ``python scripts/train.py [group=choice] [key=value ...]``.

Examples::

    python scripts/train.py                                  # Multi30k de->en, model=tiny
    python scripts/train.py model=base train.max_steps=100000
    python scripts/train.py data=folder data.dir=corpus data.src_lang=fr data.tgt_lang=en
    torchrun --nproc_per_node=2 scripts/train.py hydra.run.dir=runs/ddp   # data parallel
    python scripts/train.py train.init_from=RUN/best.pt data.dir=new_corpus   # fine-tune
"""

import json
import logging
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.distributed.elastic.multiprocessing.errors import record

from mt.checks import validate_run_config
from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra
from mt.training.setup import take_over_model
from mt.training.trainer import Trainer, TrainingInterrupted

register_configs()
log = logging.getLogger("mt")


@record  # under torchrun: a failing rank's error is reported as the job's root cause
def main(cfg: DictConfig) -> None:
    with user_errors():
        hydra_cfg = HydraConfig.get()
        given = {o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task}
        run = take_over_model(from_hydra(cfg), given)  # train.init_from: its model settings
        validate_run_config(run)
        run_dir = hydra_cfg.runtime.output_dir
        trainer = None
        try:
            trainer = Trainer(run, run_dir, given=frozenset(given))
            metrics = trainer.fit()
        except TrainingInterrupted as stopped:
            print(f"interrupted: {stopped}", file=sys.stderr)
            sys.exit(130)
        finally:
            if trainer is not None:
                trainer.dist.shutdown()
    if not metrics:
        return  # not rank 0: rank 0 reports
    if "test" not in metrics:  # train.test_at_end=false
        print(json.dumps({"run_dir": run_dir, "train": metrics["train"]}, indent=2))
        return
    test = metrics["test"]
    print(json.dumps({"run_dir": run_dir, "test": test, "train": metrics["train"]}, indent=2))
    for direction, scores in test.get("directions", {}).items():
        print(f"test BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} {direction}")
    mean = "mean of the directions, " if "directions" in test else ""
    print(
        f"test BLEU {test['bleu']:.2f} ({mean}{test['split']}, beam {test['beam_size']}) "
        f"chrF {test['chrf']:.2f} | {test['bleu_signature']}"
    )


if __name__ == "__main__":
    run_script(main, __file__, "train")
