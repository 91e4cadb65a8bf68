"""Typed configuration: the schema of a training run's options (the other commands' are in
mt/commands.py, which registers them all with Hydra).

The YAML files under ``configs/`` only choose values; these dataclasses define which keys exist
and their types, so a typo (``train.max_step=5``) or a wrong type fails when Hydra composes the
config, before any work starts. Field names equal the constructor arguments they feed.

Only this module, mt/commands.py, mt/cli.py (the command line) and ``scripts/`` know about
Hydra / OmegaConf; the rest of ``mt`` receives the plain dataclasses below.
"""

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"


@dataclass
class DataConfig:
    """Where the parallel corpus comes from and how it is cleaned and tokenised."""

    name: str = "multi30k"
    """A label for logs and run names; the code never branches on it."""
    dir: str = "data/multi30k"
    """Folder of ``{split}.{lang}`` or ``{split}.{lang}.gz`` files (one sentence per line)."""
    download_url: str | None = None
    """Base URL to fetch missing ``{split}.{lang}.gz`` files from (for users who are online)."""
    hub_name: str | None = None
    """A Hugging Face hub dataset with a ``translation`` field; when set, ``dir`` is not read."""
    hub_config: str | None = None
    """The hub dataset's configuration name, e.g. ``de-en``."""
    src_lang: str = "de"
    tgt_lang: str = "en"
    pairs: list[str] | None = None
    """Several directions in one model, e.g. ``[de-en,en-de,fr-en]`` (files ``{split}.{lang}``
    of each pair): the target language is a tag before the source (mt/data/languages.py).
    None: the one direction ``src_lang`` -> ``tgt_lang``, untagged."""
    langs: list[str] | None = None
    """Every direction between these languages, e.g. ``[de,en,fr]`` (instead of ``pairs``)."""
    pair_temperature: float = 1.0
    """Several directions: each one's share of an epoch ~ its size ** (1 / T); 1 = by size,
    larger values give small directions more (mt/data/languages.py)."""
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test_2016_flickr"
    max_train_pairs: int | None = None
    """Use only the first N training pairs (quick runs)."""
    vocab_size: int = 8000
    """Size of the joint SentencePiece vocabulary shared by source and target."""
    spm_model: str | None = None
    """An existing SentencePiece model (e.g. another run's ``spm.model``) instead of learning
    one; its special ids must be mt's (pad 0, unk 1, bos 2, eos 3)."""
    spm_model_type: str = "unigram"
    spm_max_sentences: int = 2_000_000
    """SentencePiece is trained on at most this many sentences (sampled) of the training split."""
    max_tokens: int = 250
    """Training pairs with more subword tokens than this on either side are dropped."""
    subword_alpha: float = 0.0
    """Subword regularisation (mt/data/subword_sampling.py): 0 = off; > 0 = each epoch segments
    the training split anew by sampling. Unigram: the sharpness of the sampling distribution
    (P^alpha; smaller = more, shorter pieces); BPE: the probability of dropping a merge (< 1).
    Validation, test and translation are never sampled."""
    subword_nbest: int = -1
    """Unigram sampling draws from the best N segmentations (-1: from all of them)."""
    max_len_ratio: float = 3.0
    """Training pairs whose token-length ratio exceeds this (both sides > 5 tokens) are dropped."""
    cache_dir: str | None = None
    """Arrow cache of ``datasets`` (None: the library's default, ~/.cache/huggingface)."""
    streaming: bool = False
    """Read the training split as a stream, a window at a time (corpora larger than memory;
    see mt/data/streaming.py). Validation and test splits are always loaded whole."""
    window_pairs: int = 200_000
    """Streaming: raw pairs per window, the unit of length bucketing and shuffling."""
    num_proc: int = 1
    """Processes that tokenise (``datasets.map`` workers, or the streaming worker pool)."""
    invalid_utf8: str = "error"
    """``error``: stop at the first line that is not UTF-8, naming file and line;
    ``replace``: replace such bytes with U+FFFD and count the lines."""


@dataclass
class ModelConfig:
    """Transformer sizes (Vaswani et al. 2017, Table 3 names them the same way)."""

    name: str = "tiny"
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    pre_norm: bool = True
    """Layer norm before each sub-layer (stabler, no warm-up sensitivity); False = the paper's."""
    max_positions: int = 1024
    """Longest sequence (in subword tokens) the positional table covers."""
    kernels: str = "auto"
    """``auto``: the fast paths of ``mt/kernels/`` (integer dropout masks on a CPU, whose rate
    is rounded to a multiple of 1/256; fused attention; the blockwise loss); ``plain``: the
    model exactly as written in ``mt/model/`` (``nn.Dropout`` at exactly the configured rate).
    Both compute the same function (tests/test_kernels.py)."""


@dataclass
class ShortBudgetConfig:
    """Lighter regularisation for a budget that ends after few passes over the training split
    (mt/training/budget_fit.py): such a model is still underfitting, and dropout and subword
    sampling only slow it down."""

    below_epochs: float = 0.0
    """A budget of fewer passes than this (estimated before the first update; for
    ``max_minutes`` from timed updates) trains with the values below; 0: off."""
    dropout: float = 0.1
    """``model.dropout`` for a short budget (unless model.dropout is given on the command line)."""
    subword_alpha: float = 0.0
    """``data.subword_alpha`` for a short budget (unless given on the command line)."""
    batch_tokens: int = 0
    """``train.batch_tokens`` for a short budget whose limit is the clock (``max_minutes``), when
    smaller than it and not given on the command line: the same minutes then buy more updates of
    fewer tokens each, which an underfitting model learns more from. Kept only if the timed
    smaller batches still leave the clock as the nearest limit. 0: keep the batch."""


@dataclass
class TrainConfig:
    """The optimisation loop: stopping, batching, schedule, validation."""

    max_steps: int | None = None
    max_epochs: int | None = 50
    max_minutes: float | None = None
    """Stop after this much wall-clock training, then finish as usual (test, metrics)."""
    batch_tokens: int = 4096
    """Token budget per batch: sentences x longest side (padded) stays at or under it. Under
    torchrun each process takes its own batches: an update holds world_size x accum_steps."""
    accum_steps: int = 1
    """Batches per update and process (gradient accumulation): K gives the same updates as
    batches K times larger."""
    compile: bool = False
    """``torch.compile`` the training forward pass (fuses element-wise work; compiles once,
    with dynamic shapes, before the first update). Off: slower than eager on the CPUs measured
    (benchmarks/README.md)."""
    precision: str = "auto"
    """``auto`` (the faster of fp32 and bf16 on a few real updates of this model, timed at
    start-up, fp32 winning ties; a resumed run keeps its choice: mt/training/precision.py),
    ``fp32``, ``bf16`` (autocast, no loss scaling needed) or ``fp16`` (autocast with a dynamic
    loss scaler). Weights and optimizer state stay in fp32."""
    lr: float = 1.5e-3
    """Peak learning rate, reached after ``warmup_steps`` (linearly) and then decayed."""
    warmup_steps: int = 300
    lr_decay: str = "inverse_sqrt"
    """After the warm-up: ``inverse_sqrt`` (1/sqrt(step), whatever the budget), ``linear`` or
    ``cosine`` (to zero when the budget is spent: the nearest of ``max_steps``, ``max_minutes``
    and ``max_epochs``; with ``max_minutes`` the rate follows the wall clock, so a resumed run
    is not bit-identical to an uninterrupted one). See ``mt/training/optim.py``."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    short_budget: ShortBudgetConfig = field(default_factory=ShortBudgetConfig)
    rdrop_alpha: float = 0.0
    """R-Drop (Liang et al. 2021): each batch goes through the model twice (two dropout masks,
    one forward of the doubled batch) and the loss per token is the mean of the two
    cross-entropies plus ``rdrop_alpha / 2`` times their symmetric KL divergence (the paper's
    loss halved, so its alpha means the same here; it used 5 on IWSLT'14 de-en). A regulariser
    for a model that overfits a small corpus; each update costs about twice the compute.
    0: off."""
    clip_norm: float = 1.0
    val_every_steps: int = 200
    log_every_steps: int = 25
    val_bleu: bool = True
    """Compute greedy BLEU on the validation split at each validation (selects ``best``)."""
    val_attention_plot: bool = True
    """At each validation, log the cross-attention heatmap of the first validation sentence to
    TensorBoard (needs matplotlib)."""
    patience: int = 0
    """Stop when this many validations in a row have not beaten the best score (validation
    BLEU, or loss without ``val_bleu``); 0: train until a limit. A model that has stopped
    improving on validation gets no better with more of the budget, only older."""
    save_every_steps: int = 200
    """How often ``last.pt`` is written (it is also written at each validation)."""
    keep_last: int = 0
    """Also keep the N most recent ``step_<N>.pt`` checkpoints (0: only ``last`` and ``best``)."""
    average_last: int = 0
    """At the end, average the last N ``step_*.pt`` and test with the average if it beats
    ``best.pt`` on validation (at least N numbered checkpoints are kept for it)."""
    resume: str | None = None
    """``auto`` (the run directory's ``last.pt``, if any) or the path of a checkpoint."""
    init_from: str | None = None
    """Start a new run from a checkpoint's weights (``best.pt``, ``last.pt``, ``averaged.pt``,
    ``step_N.pt``) with its model settings and SentencePiece model; optimizer, schedule and
    step count start fresh. Fine-tuning: mt/training/setup.py."""
    max_nonfinite_updates: int = 5
    """Updates with a non-finite loss or gradient are skipped; this many in a row stop training."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``..."""
    num_threads: int | None = None
    """CPU threads for torch (None: torch's default, one per core)."""
    progress_bar: bool = True
    """Show where the run is in its budget: a bar on a terminal, else a log line every
    ``progress_every_steps`` updates (mt/training/progress_display.py)."""
    progress_every_steps: int = 100
    test_at_end: bool = True
    """Translate and score the test split when training ends (false: for sweeps and speed
    comparisons, where only the validation split may be looked at)."""


@dataclass
class DecodeConfig:
    """Search settings: the one type behind training's validation and test pass, evaluate,
    translate and tune_decoding (their configs extend it), taken whole by the Translator and
    checked by :func:`mt.checks.check_decode`."""

    beam_size: int = 5
    length_penalty: float = 1.0
    """Hypothesis scores are divided by length ** length_penalty (0: no normalisation)."""
    max_len_a: float = 1.5
    max_len_b: int = 10
    """Outputs stop at ``max_len_a * source_length + max_len_b`` tokens."""
    n_best: int = 1
    batch_tokens: int = 6000
    """Source tokens per decoding batch (inputs are sorted by length first)."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` (a bf16 copy of the model), ``fp16`` (autocast) or ``auto`` (the faster
    of fp32 and bf16 on a few decode steps, timed on first use: mt/decoding/precision.py).
    bf16 decodes faster on CPUs with bf16 units but may change some outputs (benchmarks/README.md
    has the speed and BLEU); fp32, the default, translates a checkpoint the same on every
    machine. An exported model (scripts/export.py) computes in the type it was exported in."""
    threads: int | None = None
    """CPU threads for translating in evaluate / translate / tune_decoding (None: one per core)."""
    workers: int = 1
    """Processes searching batches side by side on a CPU, ``threads // workers`` threads each
    (mt/decoding/workers.py): faster where one batch's small products do not use all the
    cores, at a copy of the model per worker and their start (each loads torch and the
    checkpoint; benchmarks/README.md). Not for training's own validation, sampling or exported
    models (those translate batches side by side already)."""
    sampling: bool = False
    """Draw each next token instead of searching (mt/decoding/sampling.py; needs beam_size=1):
    ``n_best`` independent samples per line. ``top_k=1`` is greedy search."""
    top_k: int = 0
    """Sampling: only the k most probable tokens (0: all)."""
    top_p: float = 1.0
    """Sampling: only the most probable tokens whose probabilities sum to top_p (nucleus)."""
    temperature: float = 1.0
    """Sampling: logits / temperature (< 1 sharper, > 1 flatter)."""
    seed: int = 1
    """Sampling: the seed of the draws (same lines, same seed: same samples)."""


@dataclass
class RunConfig:
    """Everything ``scripts/train.py`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    seed: int = 1


def decode_settings(cfg: DecodeConfig) -> DecodeConfig:
    """The decode settings alone, from any config that extends them."""
    return DecodeConfig(**{f.name: getattr(cfg, f.name) for f in fields(DecodeConfig)})


# ----------------------------------------------------------------------------------------------
# Plain-dict round trip, for checkpoints (which store only primitive types, see checkpoint.py).


def to_dict(cfg: Any) -> dict:
    assert is_dataclass(cfg)
    return asdict(cfg)


def run_config_from_dict(raw: dict) -> RunConfig:
    """Rebuild a RunConfig from a checkpoint's dict; unknown keys (older versions) are ignored."""
    return RunConfig(
        data=_build(DataConfig, raw.get("data", {})),
        model=_build(ModelConfig, raw.get("model", {})),
        train=_build(TrainConfig, raw.get("train", {})),
        decode=_build(DecodeConfig, raw.get("decode", {})),
        seed=raw.get("seed", 1),
    )


def _build(cls: type, raw: dict) -> Any:
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            continue
        kind = known[key].type
        values[key] = (
            _build(kind, value) if is_dataclass(kind) and isinstance(value, dict) else value
        )
    return cls(**values)


def from_hydra(cfg: Any) -> Any:
    """A composed Hydra config (DictConfig over one of the schemas) -> the plain dataclass."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise ValueError(f"the option {key} is required: give {key}=...") from None
