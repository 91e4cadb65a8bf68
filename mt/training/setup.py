"""The pieces a training run is built from, one helper each: device, data and tokenizer,
model, loggers. :class:`mt.training.trainer.Trainer` calls them in order."""

from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from mt import files
from mt.checkpoint import load_checkpoint, load_weights
from mt.config import ModelConfig, RunConfig, run_config_from_dict
from mt.data.corpus import PreparedData
from mt.data.prepare import prepare_data
from mt.data.tokenizer import Tokenizer
from mt.kernels import use_kernels
from mt.loggers import ConsoleLogger, MetricLogger, MultiLogger, TensorBoardLogger
from mt.model.transformer import Transformer, build_model
from mt.runtime import use_device
from mt.training import distributed
from mt.training.checkpointing import resume_path
from mt.training.distributed import DistContext

# What a fine-tuning run cannot change: the shapes of the weights it starts from.
MODEL_SHAPE = (
    "d_model",
    "n_heads",
    "d_ff",
    "n_encoder_layers",
    "n_decoder_layers",
    "pre_norm",
    "max_positions",
)


@dataclass
class StartingPoint:
    """Where a run starts: a training checkpoint to resume (``state``), or weights to start
    from (``init``, train.init_from), or nothing; and the tokenizer that comes with either."""

    state: dict | None = None
    source: str | None = None
    init: dict | None = None
    tokenizer: Tokenizer | None = None


def starting_point(cfg: RunConfig, run_dir: Path) -> StartingPoint:
    """Resume (``train.resume``) wins: a fine-tuning run resumes like any other. Else
    ``train.init_from`` brings its weights and SentencePiece model, ``data.spm_model`` a
    SentencePiece model (the same one as init_from's, when both are given)."""
    resume_from = resume_path(cfg.train.resume, run_dir)
    if resume_from:
        state = load_checkpoint(resume_from)
        return StartingPoint(state, str(resume_from), None, Tokenizer(state["tokenizer"]))
    start = StartingPoint()
    if cfg.train.init_from:
        start.init = load_checkpoint(cfg.train.init_from)
        start.source = cfg.train.init_from
        check_same_shape(cfg.model, start.init, cfg.train.init_from)
        start.tokenizer = Tokenizer(start.init["tokenizer"])
    if cfg.data.spm_model:
        own = Tokenizer.load_checked(cfg.data.spm_model, "data.spm_model")
        if start.tokenizer and own.model_proto != start.tokenizer.model_proto:
            raise ValueError(
                f"data.spm_model={cfg.data.spm_model} is not the SentencePiece model of "
                f"train.init_from={cfg.train.init_from}: drop data.spm_model (init_from's is used)"
            )
        start.tokenizer = start.tokenizer or own
    return start


def check_same_shape(model: ModelConfig, init: dict, path: str) -> None:
    theirs = run_config_from_dict(init["config"]).model
    for name in MODEL_SHAPE:
        if getattr(model, name) != getattr(theirs, name):
            raise ValueError(
                f"train.init_from={path} has model.{name}={getattr(theirs, name)}, this run "
                f"model.{name}={getattr(model, name)}: drop that override (a fine-tuning run "
                "takes over the checkpoint's model settings)"
            )


def take_over_model(cfg: RunConfig, overridden: set[str]) -> RunConfig:
    """With ``train.init_from``: the run's model settings become the checkpoint's, except
    those given on the command line (``overridden``: ``model.dropout``, or ``model`` for a
    model choice), which :func:`check_same_shape` then holds to the checkpoint's shapes."""
    if not cfg.train.init_from:
        return cfg
    theirs = run_config_from_dict(load_checkpoint(cfg.train.init_from)["config"]).model
    kept = {
        f.name: getattr(cfg.model, f.name)
        for f in fields(ModelConfig)
        if "model" in overridden or f"model.{f.name}" in overridden
    }
    return replace(cfg, model=replace(theirs, **kept))


def start_weights(model: nn.Module, start: StartingPoint) -> None:
    """train.init_from's weights into a freshly built model."""
    if start.init is not None:
        load_weights(model, start.init["model"], source=str(start.source))


def choose_device(cfg: RunConfig) -> tuple[torch.device, DistContext]:
    """``train.device`` and ``train.num_threads``, and the process group when started by
    torchrun (each rank then takes its own GPU)."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = use_device(cfg.train.device)
    dist = distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return device, dist


def prepare_run_data(
    cfg: RunConfig, run_dir: Path, dist: DistContext, tokenizer: Tokenizer | None
) -> PreparedData:
    """Tokenised splits; the SentencePiece model is learned (unless ``tokenizer`` is given, as
    when resuming) and saved in the run directory. Rank 0 goes first: it trains the tokenizer
    and fills the Arrow cache, then the other ranks load both."""
    if not dist.is_main:
        dist.barrier()
        tokenizer = tokenizer or Tokenizer.load(run_dir / files.SPM_MODEL)
    data = prepare_data(cfg.data, seed=cfg.seed, tokenizer=tokenizer)
    if dist.is_main:
        data.tokenizer.save(run_dir / files.SPM_MODEL)
        dist.barrier()
    return data


def build_run_model(cfg: RunConfig, tokenizer: Tokenizer, device: torch.device) -> Transformer:
    """The configured model on ``device``, with the kernels of ``model.kernels``."""
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id)
    return use_kernels(model.to(device), cfg.model.kernels)


def wrap_for_training(
    model: nn.Module, cfg: RunConfig, dist: DistContext, device: torch.device
) -> nn.Module:
    """What the training steps call: DDP (gradients averaged over ranks during backward)
    and/or ``torch.compile``; the bare module stays for validation, search and checkpoints."""
    wrapped = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped, dynamic=True)
    return wrapped


def run_logger(run_dir: Path, dist: DistContext, resumed_step: int) -> MetricLogger:
    """TensorBoard and console on rank 0, nothing elsewhere. Events after the resumed
    checkpoint's step were written after it was saved: TensorBoard drops them."""
    if not dist.is_main:
        return MultiLogger()
    return MultiLogger(
        TensorBoardLogger(
            run_dir / "tensorboard", purge_step=resumed_step + 1 if resumed_step else None
        ),
        ConsoleLogger(),
    )
