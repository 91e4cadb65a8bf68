"""The options of each command (``scripts/*.py``) beyond a training run's, and their Hydra
registration: evaluate, tune_decoding, translate, serve, score, export and benchmark.

Like mt/config.py (whose decode settings most of them extend), these only define which keys
exist and their types; mt/checks.py says which values are possible.
"""

from dataclasses import dataclass, field
from typing import Any

from mt.config import DecodeConfig, RunConfig


@dataclass
class DataOverrides:
    """Data options that ``evaluate``/``translate`` may change from the checkpoint's config."""

    dir: str | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    test_split: str | None = None
    cache_dir: str | None = None


@dataclass
class EvaluateConfig(DecodeConfig):
    """``scripts/evaluate.py``: score a checkpoint on a split, with the decode settings above."""

    checkpoint: Any = "???"
    """A ``.pt`` checkpoint, an exported folder, or ``[a.pt,b.pt]``: an ensemble."""
    split: str = "test"
    """``train``/``val``/``test`` (the names configured in data) or a literal split name."""
    output: str | None = None
    """Where to write the translations (default: next to the checkpoint)."""
    src_lang: str | None = None
    """The source language (a multilingual model: with ``tgt_lang``, the one direction to
    score; both left out: every direction it was trained on)."""
    tgt_lang: str | None = None
    """The target language: a multilingual model's tag (mt/data/languages.py)."""
    device: str = "auto"
    data: DataOverrides = field(default_factory=DataOverrides)


@dataclass
class TuneDecodingConfig(DecodeConfig):
    """``scripts/tune_decoding.py``: choose beam size and length penalty on a held-out split;
    every (beam size, length penalty) pair of the lists replaces those two settings."""

    checkpoint: Any = "???"
    """A ``.pt`` checkpoint, an exported folder, or ``[a.pt,b.pt]``: an ensemble."""
    split: str = "val"
    """Tune on validation data; the test split is for the final report only."""
    beam_sizes: list[int] = field(default_factory=lambda: [1, 3, 5, 8])
    length_penalties: list[float] = field(default_factory=lambda: [0.6, 1.0, 1.4])
    src_lang: str | None = None
    """The source language (a multilingual model: with ``tgt_lang``, the one direction to
    score; both left out: every direction it was trained on)."""
    tgt_lang: str | None = None
    """The target language: a multilingual model's tag (mt/data/languages.py)."""
    device: str = "auto"
    data: DataOverrides = field(default_factory=DataOverrides)


@dataclass
class TranslateConfig(DecodeConfig):
    """``scripts/translate.py``: translate lines typed at a prompt or piped through stdin."""

    checkpoint: Any = "???"
    """A ``.pt`` checkpoint, an exported folder, or ``[a.pt,b.pt]``: an ensemble."""
    batch_size: int = 64
    """Lines read from a pipe are translated this many at a time."""
    attention_plot: str | None = None
    """A folder: write the cross-attention heatmap of each translated line there as
    ``attention_<line>.png`` (source pieces x target pieces, head mean and each head)."""
    attention_layer: int = -1
    """Decoder layer whose cross-attention is plotted (negative counts from the last)."""
    prefix: bool = False
    """Input lines are ``source<TAB>target prefix``: each translation begins with its prefix
    (as the tokenizer splits the prefix alone), then the search continues."""
    src_lang: str | None = None
    """The language of the input, for the log (a multilingual model reads any of its own)."""
    tgt_lang: str | None = None
    """The language to translate into: needed by a multilingual model with several targets."""
    device: str = "auto"


@dataclass
class ServeConfig(DecodeConfig):
    """``scripts/serve.py``: an HTTP API and a web page for a model (mt/serving/); the decode
    settings above are the defaults a request may change (``beam_size``, ``n_best``)."""

    checkpoint: str = "???"
    host: str = "127.0.0.1"
    """Loopback by default: only this machine can connect. 0.0.0.0 opens it to the network."""
    port: int = 8000
    """0: any free port (the one chosen is printed)."""
    api_key: str | None = None
    """When set (or the MT_API_KEY environment variable is), every route but /health needs it:
    ``Authorization: Bearer KEY``, ``X-API-Key: KEY``, or for the page ``/?key=KEY``."""
    max_lines: int = 64
    """Lines per request."""
    max_line_chars: int = 2000
    max_body_bytes: int = 1_000_000
    max_beam_size: int = 16
    max_wait_ms: float = 5.0
    """How long a request waits for others to share its batch."""
    tgt_lang: str | None = None
    """A multilingual model: the target of requests that name none (None: they must)."""
    device: str = "auto"


@dataclass
class ScoreConfig:
    """``scripts/score.py``: the model's log-probability of given translations."""

    checkpoint: str = "???"
    src: str = "???"
    """Source sentences, one per line (plain or .gz)."""
    tgt: str = "???"
    """Their translations, line by line."""
    batch_tokens: int = 6000
    invalid_utf8: str = "error"
    """As ``data.invalid_utf8``: ``error`` names the file and line, ``replace`` uses U+FFFD."""
    tgt_lang: str | None = None
    """The language of ``tgt``: a multilingual model's tag (needed with several targets)."""
    device: str = "auto"


@dataclass
class ExportConfig:
    """``scripts/export.py``: a checkpoint -> a CTranslate2 model folder (mt/export/)."""

    checkpoint: str = "???"
    output: str = "???"
    """A new or empty folder (or an earlier export, which is replaced once the new one is
    complete)."""
    quantization: str = "int8"
    """``int8``, ``int8_float32``, ``int8_bfloat16``, ``int8_float16``, ``bfloat16``,
    ``float16`` or ``float32``: the type the weights are stored and computed in."""


@dataclass
class BenchmarkConfig:
    """``scripts/benchmark.py``: how long to measure."""

    warmup_steps: int = 5
    """Untimed steps before the timed ones, which also run once untimed (steady state)."""
    train_steps: int = 5
    """Timed training steps per round; ours and the yardstick alternate for ``rounds`` rounds."""
    rounds: int = 4
    probe_size: int = 2048
    """Side of the square matrices of the matrix-multiply peak probe."""
    train: bool = True
    """Measure training (false: only decoding and/or the data pipeline)."""
    decode: bool = True
    """With a checkpoint: measure decoding, mt's and its CTranslate2 exports'."""
    profile: bool = False
    """Also run one round of our training steps under ``torch.profiler``: ``train.profile`` in
    the JSON (the matrix products' share of the step, their FLOP/s, the utilisation they allow)
    and the operator table in ``profile_train.txt`` (see mt/bench/step_profile.py)."""
    data_lines: int = 0
    """When > 0: stream a generated corpus of this many lines through the data pipeline and
    report lines/s and memory per window (``data_pipeline`` in the JSON)."""
    opennmt_python: str | None = None
    """An interpreter with OpenNMT-py 3.5 installed: train the same model with both toolkits'
    own trainers, side by side (``opennmt`` in the JSON; see mt/bench/opennmt_compare.py)."""
    opennmt_steps: int = 100
    """Updates per side-by-side run (speeds are logged every 20; the first interval is dropped)."""
    opennmt_rounds: int = 2
    decode_rounds: int = 2
    """Rounds over the decoding contestants (mt/bench/decoding_speed.py); the fastest counts."""
    serve: bool = False
    """Also load the HTTP server (scripts/serve.py) with concurrent clients on loopback
    (``serve`` in the JSON; see mt/bench/serving_load.py). Needs ``checkpoint=``."""
    serve_clients: list[int] = field(default_factory=lambda: [1, 8, 32])
    serve_seconds: float = 15.0
    """How long each number of clients sends sentences."""


@dataclass
class BenchmarkRunConfig(RunConfig):
    checkpoint: str | None = None
    """A trained model: its architecture is measured, and decoding too (else training only)."""
    bench: BenchmarkConfig = field(default_factory=BenchmarkConfig)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (YAML files extend them by name)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    cs.store(name="translate_schema", node=TranslateConfig)
    cs.store(name="tune_decoding_schema", node=TuneDecodingConfig)
    cs.store(name="benchmark_schema", node=BenchmarkRunConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="serve_schema", node=ServeConfig)
    cs.store(name="score_schema", node=ScoreConfig)
