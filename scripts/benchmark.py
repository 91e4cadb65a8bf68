"""Measure speed: ``python scripts/benchmark.py [checkpoint=PATH] [model=tiny] [data.dir=PATH]``.

Prints a table and writes ``benchmark.json`` in the run directory: training throughput (ours and
a plain ``torch.nn.Transformer`` of the same size on the same batches), utilisation of the
measured matrix-multiply peak, and, with a trained checkpoint, greedy and beam-5 decoding speed
and BLEU on the test split.
"""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mt.bench.benchmark import format_table, run_benchmark
from mt.checks import validate_run_config
from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra

register_configs()


def main(cfg: DictConfig) -> None:
    with user_errors():
        run = from_hydra(cfg)
        validate_run_config(run)
        out_dir = HydraConfig.get().runtime.output_dir
        result = run_benchmark(run, out_dir)
    print(format_table(result))
    print(f"written: {out_dir}/benchmark.json")


if __name__ == "__main__":
    run_script(main, __file__, "benchmark")
