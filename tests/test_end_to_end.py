"""train -> evaluate -> translate through the real scripts, on a slice of Multi30k.

The slice (a few hundred pairs) is cut at test time from the local Multi30k copy into a temporary
folder: no corpus text is stored in the repository.
"""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def multi30k_dir() -> Path | None:
    for candidate in (
        os.environ.get("MT_MULTI30K_DIR"),
        ROOT / "data" / "multi30k",
        ROOT.parent / "shared" / "data" / "multi30k",
    ):
        if candidate and (Path(candidate) / "train.de.gz").is_file():
            return Path(candidate)
    return None


def cut_slice(source: Path, target: Path, sizes: dict[str, int]) -> None:
    target.mkdir(parents=True)
    for split, n in sizes.items():
        for lang in ("de", "en"):
            with gzip.open(source / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (target / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")


def run(*args, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, input=stdin, text=True, capture_output=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.mark.slow
def test_train_evaluate_translate(tmp_path):
    source = multi30k_dir()
    if source is None:
        pytest.skip("Multi30k not found: link it into data/multi30k (see .ci/run)")
    corpus = tmp_path / "m30k"
    cut_slice(source, corpus, {"train": 400, "val": 40, "test_2016_flickr": 40})
    run_dir = tmp_path / "run"
    trained = run(
        "scripts/train.py",
        f"data.dir={corpus}",
        "data.vocab_size=1000",
        "model=tiny",
        "train.max_steps=6",
        "train.val_every_steps=3",
        "train.batch_tokens=1500",
        "train.progress_bar=false",
        "train.log_every_steps=2",
        "decode.beam_size=2",
        f"data.cache_dir={tmp_path / 'c'}",
        f"hydra.run.dir={run_dir}",
    )
    assert "test BLEU" in trained.stdout
    for name in ("last.pt", "best.pt", "spm.model", "metrics.json", "test_2016_flickr.en.hyp"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert {"bleu", "chrf", "chrf_signature"} <= set(metrics["test"])
    assert metrics["train"]["steps"] == 6

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tgt_tokens_per_s", "val/loss", "val/bleu"} <= tags

    eval_dir = tmp_path / "eval"
    evaluated = run(
        "scripts/evaluate.py",
        f"checkpoint={run_dir / 'best.pt'}",
        "split=val",
        "beam_size=1",
        "precision=bf16",
        f"data.dir={corpus}",
        f"hydra.run.dir={eval_dir}",
    )
    assert "BLEU" in evaluated.stdout and "chrF" in evaluated.stdout
    scores = json.loads((eval_dir / "scores.json").read_text())
    assert scores["split"] == "val" and scores["sentences"] == 40
    assert scores["precision"] == "bf16"
    hyps = Path(scores["translations"]).read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 41 and hyps[-1] == ""

    tuned = run(
        "scripts/tune_decoding.py",
        f"checkpoint={run_dir / 'best.pt'}",
        "beam_sizes=[1,2]",
        "length_penalties=[0.6,1.0]",
        f"data.dir={corpus}",
        f"hydra.run.dir={tmp_path / 'tune'}",
    )
    table = json.loads((tmp_path / "tune" / "tune_decoding.json").read_text())
    assert table["split"] == "val"  # settings are chosen on validation data
    assert [(r["beam_size"], r["length_penalty"]) for r in table["table"]] == [
        (1, None),
        (2, 0.6),
        (2, 1.0),
    ]
    assert table["best"]["bleu"] == max(r["bleu"] for r in table["table"])
    assert "best on val" in tuned.stdout

    piped = run(
        "scripts/translate.py",
        f"checkpoint={run_dir / 'best.pt'}",
        "beam_size=2",
        stdin="Ein Hund läuft.\n\nZwei Männer.\n",
    )
    assert piped.stdout.count("\n") == 3
    assert piped.stdout.split("\n")[1] == ""
    # Two worker processes, one sentence per batch in both: the same lines, in order.
    lines = "Ein Hund läuft.\n\nZwei Männer.\nEine Frau.\n"
    alone, side_by_side = (
        run(
            "scripts/translate.py",
            f"checkpoint={run_dir / 'best.pt'}",
            "batch_tokens=1",
            f"workers={n}",
            stdin=lines,
        ).stdout
        for n in (1, 2)
    )
    assert side_by_side == alone and alone.count("\n") == 4
    bad = run(
        "scripts/translate.py",
        f"checkpoint={run_dir / 'best.pt'}",
        "precision=half",
        stdin="Ein Hund.\n",
        check=False,
    )
    assert bad.returncode == 2 and "precision='half' must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr

    if Path("/dev/full").exists():  # a full disk under the output: one line, exit 2
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [sys.executable, "scripts/translate.py", f"checkpoint={run_dir / 'best.pt'}"],
                cwd=ROOT,
                input="Ein Hund.\n" * 200,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        assert result.returncode == 2, result.stderr
        assert "error: cannot write the translations: No space left on device" in result.stderr
        assert "Traceback" not in result.stderr

    missing = run("scripts/evaluate.py", f"checkpoint={tmp_path / 'none.pt'}", check=False)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
