"""A checkpoint -> a CTranslate2 ``TransformerSpec``, written as a self-contained directory.

CTranslate2's own converters cover OpenNMT, fairseq and Marian; this one fills its spec from
``mt``'s model directly, and writes down what its defaults would get wrong:

- the positional table is ``mt``'s own (interleaved sin/cos from position 0,
  mt/model/embeddings.py), stored in the model rather than CTranslate2's built-in one;
- layer norm epsilon is PyTorch's 1e-5 (CTranslate2 assumes 1e-6);
- the one embedding table serves source, target and the output projection (no output bias);
- pre-norm stacks end in a final norm, post-norm stacks normalise after each residual;
- the source carries EOS (added by the translator, as in training), the decoder starts at BOS.

Search settings (length penalty, per-sentence length limits) are the runtime's business:
mt/decoding/ctranslate2.py.
"""

import json
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from mt.checkpoint import checkpoint_summary, load_checkpoint
from mt.config import ModelConfig, run_config_from_dict
from mt.data.tokenizer import Tokenizer
from mt.files import SPM_MODEL
from mt.model.embeddings import sinusoidal_table

QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_bfloat16",
    "int8_float16",
    "bfloat16",
    "float16",
    "float32",
)
METADATA = "mt_export.json"
EXPORT_VERSION = 1
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which mt's model uses
# Model options whose value changes nothing the converter writes (training-only settings).
NOT_IN_THE_GRAPH = {"name", "dropout", "attention_dropout", "kernels", "max_positions"}


def export_checkpoint(checkpoint: str | Path, output: str | Path, quantization: str) -> dict:
    """Convert ``checkpoint`` into the directory ``output`` (replaced only once complete);
    returns the metadata written beside the model."""
    import ctranslate2  # noqa: F401  (a clear ImportError before any work)

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization={quantization} is not one of {', '.join(QUANTIZATIONS)}")
    output = Path(output)
    if output.exists() and not (
        output.is_dir() and (not any(output.iterdir()) or (output / METADATA).is_file())
    ):
        raise ValueError(
            f"output={output} exists and is not an exported model: give a new or empty folder"
        )
    payload = load_checkpoint(checkpoint)
    config = run_config_from_dict(payload["config"])
    check_convertible(payload["config"].get("model", {}), payload["model"], str(checkpoint))
    tokenizer = Tokenizer(payload["tokenizer"])
    spec = transformer_spec(payload["model"], config.model, tokenizer)
    spec.validate()
    spec.optimize(quantization=quantization)
    metadata = export_metadata(payload, checkpoint, quantization)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        spec.save(str(staging))
        tokenizer.save(staging / SPM_MODEL)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metadata


def check_convertible(model_options: dict, state: dict[str, torch.Tensor], source: str) -> None:
    """Fail in one line on anything the spec cannot express: a model option this converter
    does not know (a newer ``mt``), or a tensor it would not write."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(model_options) - known)
    if unknown:
        raise ValueError(
            f"{source}: model.{unknown[0]}={model_options[unknown[0]]!r} cannot be exported "
            "to CTranslate2 by this version of mt (the converter does not know that option)"
        )
    expected = set(_tensor_names(run_config_from_dict({"model": model_options}).model))
    extra = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if extra or missing:
        what = f"tensor {extra[0]}" if extra else f"no tensor {missing[0]}"
        raise ValueError(
            f"{source}: {what}: this model cannot be expressed as a CTranslate2 TransformerSpec"
        )


def _tensor_names(m: ModelConfig) -> list[str]:
    names = ["embed.weight"]
    for side, n, blocks, attns in (
        ("encoder", m.n_encoder_layers, ("attn_block", "ff_block"), ("self_attn",)),
        (
            "decoder",
            m.n_decoder_layers,
            ("self_block", "cross_block", "ff_block"),
            ("self_attn", "cross_attn"),
        ),
    ):
        for i in range(n):
            p = f"{side}_layers.{i}"
            for attn in attns:
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    names += [f"{p}.{attn}.{proj}.weight", f"{p}.{attn}.{proj}.bias"]
            for fc in ("fc1", "fc2"):
                names += [f"{p}.ff.{fc}.weight", f"{p}.ff.{fc}.bias"]
            for block in blocks:
                names += [f"{p}.{block}.norm.weight", f"{p}.{block}.norm.bias"]
        if m.pre_norm:
            names += [f"{side}_norm.weight", f"{side}_norm.bias"]
    return names


def export_metadata(payload: dict, checkpoint: str | Path, quantization: str) -> dict:
    """What the directory says about itself: the ``mt`` config, languages and scores."""
    return {
        "export_version": EXPORT_VERSION,
        "engine": "ctranslate2",
        "quantization": quantization,
        **checkpoint_summary(payload, checkpoint),
        "config": payload["config"],
    }


def transformer_spec(state: dict[str, torch.Tensor], m: ModelConfig, tokenizer: Tokenizer):
    """``mt``'s weights, named the way CTranslate2's TransformerSpec expects them."""
    from ctranslate2.specs import common_spec, transformer_spec

    spec = transformer_spec.TransformerSpec.from_config(
        (m.n_encoder_layers, m.n_decoder_layers),
        m.n_heads,
        pre_norm=m.pre_norm,
        activation=common_spec.Activation.RELU,
    )
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    spec.config.unk_token = pieces[tokenizer.unk_id]
    spec.config.bos_token = spec.config.decoder_start_token = pieces[tokenizer.bos_id]
    spec.config.eos_token = pieces[tokenizer.eos_id]
    w = {k: v.detach().float().numpy() for k, v in state.items()}
    table = sinusoidal_table(m.max_positions, m.d_model).numpy()
    for stack, side in ((spec.encoder, "encoder"), (spec.decoder, "decoder")):
        stack.scale_embeddings = True  # x sqrt(D), section 3.4
        stack.position_encodings.encodings = table
        embeddings = stack.embeddings if isinstance(stack.embeddings, list) else [stack.embeddings]
        for e in embeddings:
            e.weight = w["embed.weight"]
        if m.pre_norm:
            _norm(stack.layer_norm, w, f"{side}_norm")
    spec.decoder.projection.weight = w["embed.weight"]  # tied output layer, no bias
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder_layers.{i}"
        _self_attention(layer.self_attention, w, f"{p}.self_attn")
        _norm(layer.self_attention.layer_norm, w, f"{p}.attn_block.norm")
        _feed_forward(layer.ffn, w, p, "ff_block")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder_layers.{i}"
        _self_attention(layer.self_attention, w, f"{p}.self_attn")
        _norm(layer.self_attention.layer_norm, w, f"{p}.self_block.norm")
        _cross_attention(layer.attention, w, f"{p}.cross_attn")
        _norm(layer.attention.layer_norm, w, f"{p}.cross_block.norm")
        _feed_forward(layer.ffn, w, p, "ff_block")
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def _linear(spec: Any, w: dict, name: str) -> None:
    spec.weight, spec.bias = w[f"{name}.weight"], w[f"{name}.bias"]


def _fused(spec: Any, w: dict, names: list[str]) -> None:
    import numpy as np

    spec.weight = np.concatenate([w[f"{n}.weight"] for n in names])
    spec.bias = np.concatenate([w[f"{n}.bias"] for n in names])


def _norm(spec: Any, w: dict, name: str) -> None:
    spec.gamma, spec.beta = w[f"{name}.weight"], w[f"{name}.bias"]


def _self_attention(spec: Any, w: dict, p: str) -> None:
    _fused(spec.linear[0], w, [f"{p}.q_proj", f"{p}.k_proj", f"{p}.v_proj"])
    _linear(spec.linear[1], w, f"{p}.out_proj")


def _cross_attention(spec: Any, w: dict, p: str) -> None:
    _linear(spec.linear[0], w, f"{p}.q_proj")
    _fused(spec.linear[1], w, [f"{p}.k_proj", f"{p}.v_proj"])
    _linear(spec.linear[2], w, f"{p}.out_proj")


def _feed_forward(spec: Any, w: dict, p: str, block: str) -> None:
    _linear(spec.linear_0, w, f"{p}.ff.fc1")
    _linear(spec.linear_1, w, f"{p}.ff.fc2")
    _norm(spec.layer_norm, w, f"{p}.{block}.norm")
