"""Checkpoints: round trip, atomic writes, safe loading, clear mismatch errors."""

import os
import pickle

import pytest
import torch

from mt.checkpoint import load_checkpoint, load_model, model_payload, save_checkpoint
from mt.config import ModelConfig, RunConfig
from mt.model.transformer import build_model


def make_checkpoint(tmp_path, tokenizer, run_id=None, **model_kw):
    cfg = RunConfig(
        model=ModelConfig(
            d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1, n_decoder_layers=1, **model_kw
        )
    )
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, pad_id=0)
    path = tmp_path / "ckpt.pt"
    extra = {"run_id": run_id} if run_id else {}
    save_checkpoint(path, {**model_payload(model, cfg, tokenizer), **extra})
    return path, model, cfg


def test_round_trip_gives_the_same_model(tmp_path, tokenizer):
    path, model, cfg = make_checkpoint(tmp_path, tokenizer)
    loaded = load_model(path)
    assert loaded.config == cfg
    src = torch.randint(4, 50, (2, 5))
    tgt = torch.randint(4, 50, (2, 3))
    model.eval()
    torch.testing.assert_close(loaded.model(src, tgt), model(src, tgt))
    assert loaded.tokenizer.model_proto == tokenizer.model_proto


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, tokenizer, monkeypatch):
    path, _, _ = make_checkpoint(tmp_path, tokenizer)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="previous file is unchanged"):
        save_checkpoint(path, {"model": {}, "config": {}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_code_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Exploit()}, path)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=str(raw)):
        load_checkpoint(raw)


def test_truncated_file_names_the_file(tmp_path, tokenizer):
    path, _, _ = make_checkpoint(tmp_path, tokenizer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{path}.*truncated or corrupt"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_size_mismatch_says_which_sizes_differ(tmp_path, tokenizer):
    path, _, _ = make_checkpoint(tmp_path, tokenizer)
    payload = load_checkpoint(path)
    payload["config"]["model"]["d_ff"] = 64
    save_checkpoint(path, payload)
    with pytest.raises(ValueError, match=r"fc1.weight: checkpoint \(32, 16\) vs model \(64, 16\)"):
        load_model(path)


def test_average_checkpoints_is_the_mean(tmp_path, tokenizer):
    from mt.checkpoint import average_checkpoints

    paths = []
    for i in range(3):
        sub = tmp_path / str(i)
        sub.mkdir()
        path, _, _ = make_checkpoint(sub, tokenizer, run_id="run-a")
        paths.append(path)
    states = [load_checkpoint(p)["model"] for p in paths]
    averaged = average_checkpoints(paths)
    assert averaged["run_id"] == "run-a"
    name = "decoder_layers.0.ff.fc1.weight"
    torch.testing.assert_close(averaged["model"][name], sum(s[name] for s in states) / 3)
    out = tmp_path / "avg.pt"
    save_checkpoint(out, averaged)
    assert load_model(out).config.model.d_model == 16
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])


def test_averaging_checkpoints_of_different_runs_is_refused_unless_asked(tmp_path, tokenizer):
    """Same vocabulary, same shapes, other runs: the mean of two models is not a model."""
    import subprocess
    import sys

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _, _ = make_checkpoint(tmp_path / "a", tokenizer, run_id="run-a")
    b, _, _ = make_checkpoint(tmp_path / "b", tokenizer, run_id="run-b")
    script = [sys.executable, "scripts/average_checkpoints.py"]
    out = tmp_path / "avg.pt"
    refused = subprocess.run([*script, out, a, b], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and not out.exists()
    assert refused.stderr.startswith(f"error: {a} and {b} come from different training runs")
    assert "--other-runs" in refused.stderr
    forced = subprocess.run(
        [*script, "--other-runs", out, a, b], capture_output=True, text=True, timeout=120
    )
    assert forced.returncode == 0, forced.stderr
    assert "run_id" not in load_checkpoint(out)


def test_last_pt_is_written_after_the_files_of_its_step(tmp_path, monkeypatch):
    """``last.pt`` is where a resumed run starts: a kill before it is written must leave the
    previous one, never a ``last.pt`` whose ``best.pt`` or ``step_N.pt`` is missing."""
    import mt.training.checkpointing as checkpointing
    from mt.training.checkpointing import CheckpointFiles

    written = []
    monkeypatch.setattr(checkpointing, "save_checkpoint", lambda path, _: written.append(path.name))
    files = CheckpointFiles(tmp_path, keep_last=2)
    files.save({}, step=200, best=True)
    assert written == ["best.pt", "step_200.pt", "last.pt"]
    written.clear()
    files.save({}, step=400, best=False)
    assert written == ["step_400.pt", "last.pt"]


def test_a_run_directory_with_a_run_in_it_is_not_overwritten(tmp_path):
    from mt.training.checkpointing import resume_path

    assert resume_path(None, tmp_path) is None  # an empty directory: a new run
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a training run.*train.resume=auto"):
        resume_path(None, tmp_path)
    assert resume_path("auto", tmp_path) == tmp_path / "last.pt"


def test_a_second_training_in_the_same_directory_refuses(tmp_path):
    import subprocess
    import sys

    from mt.training.checkpointing import RunLock

    lock = RunLock(tmp_path)
    # Another process trying the same directory is refused while the lock is held...
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pathlib, sys; from mt.training.checkpointing import RunLock; "
            f"RunLock(pathlib.Path({str(tmp_path)!r}))",
        ],
        capture_output=True,
        text=True,
    )
    assert other.returncode != 0
    assert f"another training (process {os.getpid()}) is running in {tmp_path}" in other.stderr
    lock.release()
    RunLock(tmp_path).release()  # ...and gets it once it is released


def test_flipped_bytes_in_the_weights_are_found(tmp_path, tokenizer):
    path, _, _ = make_checkpoint(tmp_path, tokenizer)
    data = bytearray(path.read_bytes())
    weight = load_checkpoint(path)["model"]["embed.weight"]
    at = bytes(data).find(weight.numpy().tobytes()[:64])
    assert at > 0  # the tensor's bytes are stored as they are
    data[at + 10] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt: .*checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS"),
        (b"<!DOCTYPE html><html>Not found</html>", "not an mt checkpoint"),
        (b"", "not an mt checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, content, message):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_full_disk_inside_torch_save_keeps_the_previous_checkpoint(
    tmp_path, tokenizer, monkeypatch
):
    path, _, _ = make_checkpoint(tmp_path, tokenizer)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):  # what torch.save's zip writer raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="could not write checkpoint .* previous file is unchanged"):
        save_checkpoint(path, {"model": {}, "config": {}})
    assert path.read_bytes() == before


def test_a_place_that_cannot_hold_a_checkpoint_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"could not write checkpoint {blocker}/model.pt"):
        save_checkpoint(blocker / "model.pt", {"model": {}, "config": {}})
