"""Export a checkpoint for fast CPU inference with CTranslate2:
``python scripts/export.py checkpoint=RUN/best.pt output=DIR [quantization=int8]``.

DIR is self-contained (the CTranslate2 model, the SentencePiece model, the mt config and the
run's scores): give it to translate.py / evaluate.py as ``checkpoint=DIR``.
"""

import sys
from pathlib import Path

from omegaconf import DictConfig

from mt.cli import run_script, user_errors
from mt.commands import register_configs
from mt.config import from_hydra
from mt.export.convert import export_checkpoint

register_configs()


def main(cfg: DictConfig) -> None:
    with user_errors():
        ecfg = from_hydra(cfg)
        metadata = export_checkpoint(ecfg.checkpoint, ecfg.output, ecfg.quantization)
    size = (Path(ecfg.output) / "model.bin").stat().st_size
    print(
        f"exported {ecfg.checkpoint} ({metadata['src_lang']}->{metadata['tgt_lang']}, "
        f"{metadata['parameters']:,} parameters) to {ecfg.output} as {ecfg.quantization}: "
        f"model.bin {size / 2**20:.1f} MiB",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run_script(main, __file__, "export")
