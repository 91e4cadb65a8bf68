"""The names of the files mt writes, each defined once: a run directory's checkpoints, its
SentencePiece model and metrics, and translation files."""

LAST = "last.pt"  # the newest save of a run: what train.resume=auto continues
BEST = "best.pt"  # the best validation score so far
SPM_MODEL = "spm.model"  # the run's (and an export's) SentencePiece model
METRICS = "metrics.json"  # a finished run's scores and summary


def hypothesis_file(split: str, lang: str) -> str:
    """Translations of ``split`` into ``lang`` (for a multilingual model: a direction,
    ``de-en``), one line per source line."""
    return f"{split}.{lang}.hyp"
