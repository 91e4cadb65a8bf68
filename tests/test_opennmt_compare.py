"""The OpenNMT-py side-by-side: its log is parsed, the same pieces and vocabulary are exported,
and the whole comparison runs (against a stand-in ``onmt`` package: OpenNMT-py itself is not
installed in CI; benchmarks/README.md has the real run)."""

import json
import sys
import textwrap

import pytest

from mt.bench.opennmt_compare import (
    compare_with_opennmt,
    export_pieces,
    opennmt_config,
    parse_opennmt_log,
    steady,
)
from mt.data.prepare import prepare_data
from tests.conftest import small_run

# Two report lines in OpenNMT-py 3.5's format.
LOG = """\
[2026-11-24 07:52:20,967 INFO] Step 20/   60; acc: 6.1; ppl: 4220.5; xent: 8.3; lr: 0.00051; \
sents:    4189; bsz: 3091/3299/209; 413/441 tok/s;    150 sec;
[2026-11-24 07:52:50,515 INFO] Step 40/   60; acc: 12.9; ppl: 663.0; xent: 6.5; lr: 0.00099; \
sents:    4230; bsz: 2763/2990/212; 1871/2024 tok/s;    179 sec;
"""


def test_opennmt_log_gives_target_tokens_per_s_per_interval():
    intervals = parse_opennmt_log(LOG)
    assert intervals == [
        {"step": 20, "tgt_tokens_per_step": 3299, "tgt_tokens_per_s": 441.0},
        {"step": 40, "tgt_tokens_per_step": 2990, "tgt_tokens_per_s": 2024.0},
    ]
    assert steady([441.0, 2024.0, 2000.0]) == 2012.0  # the warm-up interval is dropped
    with pytest.raises(ValueError, match="opennmt_steps"):
        steady([441.0])


def test_export_writes_the_same_pieces_and_vocabulary(tmp_path):
    cfg = small_run(tmp_path)
    data = prepare_data(cfg.data, seed=1)
    files = export_pieces(data, tmp_path / "pieces", n_val=5)
    tok = data.tokenizer
    src_lines = (tmp_path / "pieces" / "train.src").read_text(encoding="utf-8").splitlines()
    assert len(src_lines) == len(data.train)
    first = src_lines[0].split(" ")
    assert first == [tok.id_to_piece(i) for i in data.train.src_ids[0]]
    assert len((tmp_path / "pieces" / "val.tgt").read_text().splitlines()) == 5
    vocab = [line.split("\t")[0] for line in open(files["vocab"], encoding="utf-8")]
    assert len(vocab) == tok.vocab_size - 4 and "<pad>" not in vocab and "<s>" not in vocab
    onmt = opennmt_config(cfg, files, steps=50, report_every=10, out=tmp_path, device="cpu")
    m = cfg.model
    assert (onmt["enc_layers"], onmt["dec_layers"], onmt["hidden_size"]) == (
        m.n_encoder_layers,
        m.n_decoder_layers,
        m.d_model,
    )
    assert (onmt["transformer_ff"], onmt["heads"], onmt["batch_size"]) == (
        m.d_ff,
        m.n_heads,
        cfg.train.batch_tokens,
    )
    assert onmt["gpu_ranks"] == [] and onmt["train_steps"] == 50


STAND_IN = """
import json, sys
cfg = json.load(open(sys.argv[sys.argv.index("-config") + 1]))
assert cfg["share_vocab"] and cfg["train_steps"] > 0
n = sum(1 for _ in open(cfg["data"]["corpus_1"]["path_tgt"]))
steps, every = cfg["train_steps"], cfg["report_every"]
with open(cfg["log_file"], "w") as log:
    for step in range(every, steps + 1, every):
        log.write(f"[x INFO] Step {step}/ {steps}; acc: 1.0; ppl: 9.0; xent: 2.2; "
                  f"lr: 0.1; sents: {n}; bsz: 100/{n}/10; 100/{step * 10} tok/s; 1 sec;\\n")
"""


def test_side_by_side_runs_both_trainers_and_reports_the_ratio(tmp_path):
    package = tmp_path / "standin" / "onmt"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "3.5.1"\n')
    (package / "bin" / "__init__.py").write_text("")
    (package / "bin" / "train.py").write_text(textwrap.dedent(STAND_IN))
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "standin"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    cfg = small_run(tmp_path)
    result = compare_with_opennmt(
        cfg,
        prepare_data(cfg.data, seed=1),
        python=str(python),
        steps=6,
        rounds=2,
        out=tmp_path / "side",
        device="cpu",
        report_every=2,
    )
    # The stand-in reports 10 x step tokens/s: intervals at steps 4 and 6 are kept.
    assert result["opennmt_tgt_tokens_per_s"] == 50.0
    assert result["ours_tgt_tokens_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["ours_tgt_tokens_per_s"] / 50.0, rel=1e-3)
    assert len(result["rounds"]) == 2 and result["opennmt_py"] == "3.5.1"
    written = json.loads((tmp_path / "side" / "opennmt_1" / "onmt.yaml").read_text())
    assert written["train_steps"] == 6
    assert (tmp_path / "side" / "ours_1" / "metrics.json").is_file()


def test_a_python_without_opennmt_is_named(tmp_path):
    cfg = small_run(tmp_path)
    with pytest.raises(ValueError, match="bench.opennmt_python"):
        compare_with_opennmt(
            cfg,
            prepare_data(cfg.data, seed=1),
            python=sys.executable,
            steps=6,
            rounds=1,
            out=tmp_path / "side",
            device="cpu",
        )
