"""Where and how reproducibly code runs: device choice and seeding."""

import random

import numpy as np
import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available; use cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N)"
        ) from None


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
