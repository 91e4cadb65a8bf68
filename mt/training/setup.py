"""The pieces a training run is built from, one helper each: device, data and tokenizer,
model, loggers. :class:`mt.training.trainer.Trainer` calls them in order."""

from pathlib import Path

import torch
from torch import nn

from mt.config import RunConfig
from mt.data.corpus import PreparedData
from mt.data.prepare import prepare_data
from mt.data.tokenizer import Tokenizer
from mt.kernels import use_kernels
from mt.loggers import ConsoleLogger, MetricLogger, MultiLogger, TensorBoardLogger
from mt.model.transformer import Transformer, build_model
from mt.runtime import use_device
from mt.training import distributed
from mt.training.distributed import DistContext


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
        tokenizer = tokenizer or Tokenizer.load(run_dir / "spm.model")
    data = prepare_data(cfg.data, seed=cfg.seed, tokenizer=tokenizer)
    if dist.is_main:
        data.tokenizer.save(run_dir / "spm.model")
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
