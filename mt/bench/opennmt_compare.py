"""Side by side with OpenNMT-py: the same model, data, tokenisation and batch size, trained by
both toolkits' own trainers in alternating rounds on this machine.

Why full trainers and their own logs: a user compares what ``train.py`` and ``onmt_train`` deliver
between validations (data loading, loss, optimizer and all), not one kernel. Each trainer reports
target tokens/s (real tokens, padding excluded) over fixed intervals of steps; the first interval
holds start-up and warm-up and is dropped; the rest are averaged. Rounds alternate (ours, theirs,
ours, theirs...) so that load changes on a shared machine hit both alike.

OpenNMT-py runs in its own interpreter (``bench.opennmt_python``): it pins an older torch, so it
is installed beside ours with ``--no-deps`` on the same torch (benchmarks/README.md shows how).
It reads the pieces of our SentencePiece model, written out space-separated, with the same
vocabulary; the model is the same Transformer (pre-norm, sinusoidal positions, tied embeddings
and output layer, ReLU feed-forward, dropout, label smoothing, Adam with inverse-sqrt warmup).
"""

import dataclasses
import json
import logging
import re
import subprocess
import time
from pathlib import Path

from mt.config import RunConfig
from mt.data.corpus import PreparedData
from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from mt.plots.curves import read_scalars
from mt.training.trainer import Trainer

log = logging.getLogger("mt")

# "Step 40/  100; acc: 9.1; ppl: 1606.5; xent: 7.4; lr: 0.00052; sents: 2404; bsz: 2838/ 2974/
# 120; 1786/1871 tok/s;     64 sec;" (the numbers before "tok/s" are source/target tokens/s)
_ONMT_STEP = re.compile(r"Step\s+(\d+)/\s*\d+;.*?bsz:\s*(\d+)/\s*(\d+)/.*?(\d+)/\s*(\d+) tok/s")


def export_pieces(data: PreparedData, out: Path, n_val: int = 200) -> dict[str, str]:
    """Write the training split (and a little of validation) as space-separated pieces, and the
    vocabulary in OpenNMT-py's ``token<TAB>count`` format, without our four special symbols
    (OpenNMT-py adds its own in their place, so both vocabularies have the same size)."""
    out.mkdir(parents=True, exist_ok=True)
    tok = data.tokenizer
    specials = {PAD_ID, UNK_ID, BOS_ID, EOS_ID}
    files = {}

    def write(name: str, rows: list[list[int]]) -> None:
        path = out / name
        with path.open("w", encoding="utf-8") as f:
            for ids in rows:
                f.write(" ".join(tok.id_to_piece(i) for i in ids) + "\n")
        files[name] = str(path)

    write("train.src", data.train.src_ids)
    write("train.tgt", data.train.tgt_ids)
    write("val.src", data.val[0].ids.src_ids[:n_val])
    write("val.tgt", data.val[0].ids.tgt_ids[:n_val])
    vocab = out / "vocab.txt"
    vocab.write_text(
        "".join(f"{tok.id_to_piece(i)}\t1\n" for i in range(tok.vocab_size) if i not in specials),
        encoding="utf-8",
    )
    files["vocab"] = str(vocab)
    return files


def opennmt_config(
    cfg: RunConfig, files: dict[str, str], steps: int, report_every: int, out: Path, device: str
) -> dict:
    """An ``onmt_train`` configuration for the model, batch size and schedule of ``cfg``."""
    m, t = cfg.model, cfg.train
    on_gpu = device.startswith("cuda")
    return {
        "save_data": str(out / "onmt"),
        "overwrite": True,
        "src_vocab": files["vocab"],
        "share_vocab": True,
        "src_vocab_size": cfg.data.vocab_size,
        "tgt_vocab_size": cfg.data.vocab_size,
        "data": {
            "corpus_1": {"path_src": files["train.src"], "path_tgt": files["train.tgt"]},
            "valid": {"path_src": files["val.src"], "path_tgt": files["val.tgt"]},
        },
        "save_model": str(out / "onmt_model"),
        "save_checkpoint_steps": steps + 1000,  # speed only: no checkpoint in the timed steps
        "valid_steps": steps + 1000,
        "train_steps": steps,
        "report_every": report_every,
        "log_file": str(out / "onmt_train.log"),
        "seed": cfg.seed,
        "world_size": 1,
        "gpu_ranks": [0] if on_gpu else [],
        "model_dtype": "fp32",
        "encoder_type": "transformer",
        "decoder_type": "transformer",
        "enc_layers": m.n_encoder_layers,
        "dec_layers": m.n_decoder_layers,
        "hidden_size": m.d_model,
        "word_vec_size": m.d_model,
        "transformer_ff": m.d_ff,
        "heads": m.n_heads,
        "pos_ffn_activation_fn": "relu",
        "position_encoding": True,
        "share_embeddings": True,
        "share_decoder_embeddings": True,
        "dropout": [m.dropout],
        "attention_dropout": [m.attention_dropout],
        "label_smoothing": t.label_smoothing,
        "batch_type": "tokens",
        "batch_size": t.batch_tokens,
        "normalization": "tokens",
        "accum_count": [1],
        "optim": "adam",
        "adam_beta1": 0.9,
        "adam_beta2": 0.98,
        "decay_method": "noam",
        "learning_rate": 2.0,
        "warmup_steps": t.warmup_steps,
        "max_grad_norm": t.clip_norm,
        "param_init": 0.0,
        "param_init_glorot": True,
    }


def parse_opennmt_log(text: str) -> list[dict]:
    """Per report interval: the step and OpenNMT-py's own target tokens/s and batch size."""
    return [
        {"step": int(s), "tgt_tokens_per_step": int(bt), "tgt_tokens_per_s": float(tt)}
        for s, _bs, bt, _st, tt in _ONMT_STEP.findall(text)
    ]


def steady(intervals: list[float], skip: int = 1) -> float:
    """Mean of the per-interval rates after the first ``skip`` (start-up, warm-up)."""
    kept = intervals[skip:]
    if not kept:
        raise ValueError("not enough report intervals: raise bench.opennmt_steps")
    return sum(kept) / len(kept)


def run_opennmt(python: str, config: dict, out: Path, timeout_s: float) -> list[dict]:
    """Train with OpenNMT-py in a subprocess; its per-interval speeds."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "onmt.yaml"
    config_path.write_text(json.dumps(config, indent=1))  # JSON is YAML too
    command = [python, "-m", "onmt.bin.train", "-config", str(config_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(
            f"OpenNMT-py failed (exit {done.returncode}) running {' '.join(command)}:\n"
            + done.stderr[-3000:]
        )
    intervals = parse_opennmt_log(Path(config["log_file"]).read_text(encoding="utf-8"))
    if not intervals:
        raise RuntimeError(f"no 'Step ...tok/s' lines in {config['log_file']}")
    return intervals


def run_ours(cfg: RunConfig, steps: int, report_every: int, out: Path) -> list[float]:
    """Train with our Trainer (as ``scripts/train.py`` does) for ``steps``; its per-interval
    target tokens/s as logged to TensorBoard."""
    train = dataclasses.replace(
        cfg.train,
        max_steps=steps,
        max_epochs=None,
        max_minutes=None,
        val_every_steps=steps + 1000,  # one validation, at the end, outside the intervals
        save_every_steps=steps + 1000,
        log_every_steps=report_every,
        val_bleu=False,
        val_attention_plot=False,
        keep_last=0,
        average_last=0,
        progress_bar=False,
        test_at_end=False,
        resume=None,
        # OpenNMT-py trains in fp32 on a CPU: ``auto`` (bf16 on CPUs with bf16 units) would
        # compare different arithmetic. An explicit train.precision is kept.
        precision="fp32" if cfg.train.precision == "auto" else cfg.train.precision,
    )
    trainer = Trainer(dataclasses.replace(cfg, train=train), out)
    try:
        trainer.fit()
    finally:
        trainer.dist.shutdown()
    return [v for _, v in read_scalars(out / "tensorboard")["train/tgt_tokens_per_s"]]


def compare_with_opennmt(
    cfg: RunConfig,
    data: PreparedData,
    *,
    python: str,
    steps: int,
    rounds: int,
    out: Path,
    device: str,
    report_every: int = 20,
) -> dict:
    """Alternate ``rounds`` runs of each trainer of ``steps`` updates; steady-state target
    tokens/s of each and their ratio."""
    version = subprocess.run(
        [python, "-c", "import onmt, torch; print(onmt.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if version.returncode != 0:
        raise ValueError(
            f"bench.opennmt_python={python} cannot import OpenNMT-py (install it as "
            f"benchmarks/README.md shows): {version.stderr.strip()[-300:]}"
        )
    files = export_pieces(data, out / "pieces")
    ours, theirs, batch = [], [], []
    for r in range(rounds):
        start = time.perf_counter()
        ours.append(steady(run_ours(cfg, steps, report_every, out / f"ours_{r}")))
        log.info("round %d: ours %.0f tgt tok/s (%.0f s)", r, ours[-1], time.perf_counter() - start)
        start = time.perf_counter()
        config = opennmt_config(cfg, files, steps, report_every, out / f"opennmt_{r}", device)
        intervals = run_opennmt(python, config, out / f"opennmt_{r}", timeout_s=3600)
        theirs.append(steady([i["tgt_tokens_per_s"] for i in intervals]))
        batch += [i["tgt_tokens_per_step"] for i in intervals]
        log.info(
            "round %d: OpenNMT-py %.0f tgt tok/s (%.0f s)",
            r,
            theirs[-1],
            time.perf_counter() - start,
        )
    mean_ours, mean_theirs = sum(ours) / rounds, sum(theirs) / rounds
    onmt_version, torch_version = version.stdout.split()
    return {
        "opennmt_py": onmt_version,
        "opennmt_torch": torch_version,
        "steps_per_run": steps,
        "report_every": report_every,
        "ours_tgt_tokens_per_s": round(mean_ours, 1),
        "opennmt_tgt_tokens_per_s": round(mean_theirs, 1),
        "speedup": round(mean_ours / mean_theirs, 3),
        "rounds": [{"ours": round(a, 1), "opennmt": round(b, 1)} for a, b in zip(ours, theirs)],
        "opennmt_tgt_tokens_per_step": round(sum(batch) / len(batch), 1),
    }
