"""mt: a Transformer machine translation toolkit (train, evaluate, translate)."""

__version__ = "0.1.0"
