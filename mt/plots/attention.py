"""Cross-attention of a translation as a heatmap: which source pieces each target piece looks at.

The weights are the model's own: the translation is decoded first, then scored once more with
teacher forcing while :func:`capture_attention` records the explicit softmax(QK^T/sqrt(d_k))
of the chosen decoder layer's cross-attention. Rows (target pieces) sum to 1.

Legend: H heads, T target pieces (+ EOS), S source pieces (+ EOS).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mt.data.tokenizer import Tokenizer
from mt.decoding.translator import Translator
from mt.model.attention import capture_attention
from mt.model.masks import padding_mask
from mt.model.transformer import Transformer


@dataclass
class CrossAttention:
    source_pieces: list[str]  # S, EOS included
    target_pieces: list[str]  # T, EOS included
    weights: np.ndarray  # (H, T, S)
    layer: int


def resolve_layer(model: Transformer, layer: int) -> int:
    """A decoder layer index (negative counts from the last) -> 0-based, or a clear error."""
    n_layers = len(model.decoder_layers)
    if not -n_layers <= layer < n_layers:
        raise ValueError(
            f"attention_layer={layer} does not exist: the decoder has {n_layers} layers "
            f"(use 0..{n_layers - 1}, or -1 for the last)"
        )
    return layer % n_layers


@torch.inference_mode()
def cross_attention(
    translator: Translator, source: str, *, layer: int = -1, output: str | None = None
) -> CrossAttention:
    """Translate ``source`` (unless its ``output`` is given) and return the cross-attention of
    decoder layer ``layer`` over that output."""
    model: Transformer = translator.model
    tokenizer: Tokenizer = translator.tokenizer
    layer = resolve_layer(model, layer)
    if output is None:
        output = translator.translate([source])[0]
    src_ids = translator.encode([source])[0] + [tokenizer.eos_id]
    tgt_ids = tokenizer.encode([output])[0]
    device = translator.device
    src = torch.tensor([src_ids], device=device)  # (1, S)
    tgt_in = torch.tensor([[tokenizer.bos_id] + tgt_ids], device=device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model) as records:
            src_mask = padding_mask(src == tokenizer.pad_id)
            model.decode(tgt_in, model.encode(src, src_mask), src_mask)
    finally:
        model.train(was_training)
    weights = records[f"decoder_layers.{layer}.cross_attn"][0][0]  # (H, T, S)
    pieces = [tokenizer.id_to_piece(i) for i in src_ids]
    out_pieces = [tokenizer.id_to_piece(i) for i in tgt_ids] + ["</s>"]
    return CrossAttention(pieces, out_pieces, weights.float().cpu().numpy(), layer)


def plot(attention: CrossAttention, *, per_head: bool = True):
    """A matplotlib Figure: the head average, then (optionally) one panel per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = attention.weights.shape[0]
    panels = [("mean over heads", attention.weights.mean(axis=0))]
    if per_head:
        panels += [(f"head {h + 1}", attention.weights[h]) for h in range(heads)]
    t, s = attention.weights.shape[1:]
    cell = 0.32
    width, height = max(3.0, s * cell + 1.5), max(2.5, t * cell + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, (title, grid) in zip(axes[0], panels):
        ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(s), attention.source_pieces, rotation=90, fontsize=8)
        ax.set_yticks(range(t), attention.target_pieces, fontsize=8)
        ax.set_title(f"{title} (decoder layer {attention.layer + 1})", fontsize=9)
        ax.set_xlabel("source pieces")
    axes[0][0].set_ylabel("target pieces")
    fig.tight_layout()
    return fig


def plot_folder(path: str | Path, option: str = "attention_plot") -> Path:
    """The folder heatmaps go to, created now so that a bad path fails before any work."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option}={folder} is a file: give a folder for the heatmaps")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{option}={folder}: cannot create the folder ({err.strerror})") from None
    return folder


def save_plot(attention: CrossAttention, path: str | Path, *, per_head: bool = True) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot(attention, per_head=per_head)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attention_writer(translator: Translator, folder: str, layer: int):
    """A per-line hook for translate.py: write the line's cross-attention heatmap as a PNG in
    ``folder`` (checked now, not after the first line)."""
    if getattr(translator.model, "decoder_layers", None) is None:
        raise ValueError(
            "attention_plot needs one .pt checkpoint: an exported model's engine does not return "
            "attention weights, and an ensemble has one attention per model"
        )
    out = plot_folder(folder)
    resolve_layer(translator.model, layer)

    def write(number: int, text: str) -> None:
        if text.strip():
            attention = cross_attention(translator, text, layer=layer)
            path = save_plot(attention, out / f"attention_{number}.png")
            print(f"attention heatmap: {path}", file=sys.stderr)

    return write
