"""``decode.workers``: batches searched side by side in worker processes translate exactly what
one process translates, in input order; misuse and a dead worker are one clear error."""

import copy
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import synthetic_sentences, untrained_checkpoint

from mt.checks import check_decode
from mt.config import DecodeConfig
from mt.decoding.loading import load_translator
from mt.decoding.translator import Translator
from mt.decoding.workers import balanced_batch_tokens, check_workers

ROOT = Path(__file__).resolve().parents[1]


def in_parent(translator: Translator) -> Translator:
    """The same translator searching in this process."""
    here = copy.copy(translator)
    here.workers = None
    return here


def worker_pids(translator: Translator) -> list[int]:
    return list(translator.workers._pool._processes)


def test_workers_translate_what_one_process_translates(tmp_path, tokenizer, monkeypatch):
    lines = synthetic_sentences(30, seed=3)
    lines[4] = ""  # an empty line stays empty, in its place
    prefixes = [line.split()[0] if n % 3 == 0 and line else "" for n, line in enumerate(lines)]
    # Batches small enough that the workers' balancing does not change them: the same batches
    # in both, so fp32 gives the same numbers.
    settings = DecodeConfig(beam_size=3, n_best=2, batch_tokens=30, workers=2)
    translator, _ = load_translator(str(untrained_checkpoint(tmp_path, tokenizer)), settings, "cpu")
    try:
        for started in translator.workers.started:
            assert started.result(timeout=120) != os.getpid()
        assert len(worker_pids(translator)) == 2
        greedy = replace(settings, beam_size=1, n_best=1)
        expected = [
            in_parent(translator).translate_nbest(lines, prefixes=prefixes),
            in_parent(translator).with_settings(greedy).translate_nbest(lines),
        ]

        def not_here(*args, **kwargs):
            raise AssertionError("the parent searched a batch itself")

        monkeypatch.setattr(Translator, "_search", not_here)
        found = [
            translator.translate_nbest(lines, prefixes=prefixes),
            translator.with_settings(greedy).translate_nbest(lines),
        ]
        assert found == expected
        assert found[0][4][0].text == "" and len(found[0][0]) == 2
    finally:
        translator.workers.close()


def test_sampling_draws_in_the_parent_from_its_seed(tmp_path, tokenizer):
    lines = synthetic_sentences(12, seed=4)
    settings = DecodeConfig(beam_size=1, sampling=True, n_best=2, seed=7, workers=2)
    translator, _ = load_translator(str(untrained_checkpoint(tmp_path, tokenizer)), settings, "cpu")
    try:
        here = in_parent(translator)  # before any draw: its own generator, seeded alike
        assert translator.translate_nbest(lines) == here.translate_nbest(lines)
    finally:
        translator.workers.close()


def test_a_dead_worker_is_one_clear_error(tmp_path, tokenizer):
    settings = DecodeConfig(beam_size=1, workers=2)
    translator, _ = load_translator(str(untrained_checkpoint(tmp_path, tokenizer)), settings, "cpu")
    try:
        translator.workers.started[0].result(timeout=120)
        os.kill(worker_pids(translator)[0], signal.SIGKILL)
        with pytest.raises(ChildProcessError, match="decoding worker process stopped.*workers=1"):
            translator.translate(synthetic_sentences(20, seed=5))
    finally:
        translator.workers.close()


def worker_children(pid: int) -> list[int]:
    """The spawned worker processes among ``pid``'s children."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(child))
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc for the children")
def test_translate_py_says_in_one_line_that_a_worker_died(tmp_path, tokenizer):
    path = untrained_checkpoint(tmp_path, tokenizer)
    script = [sys.executable, "scripts/translate.py", f"checkpoint={path}", "workers=2"]
    process = subprocess.Popen(
        script, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while len(workers := worker_children(process.pid)) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "no workers started"
            time.sleep(0.2)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        _, err = process.communicate(input=b"a b c\nd e\n", timeout=120)
    finally:
        process.kill()
    assert process.returncode == 2, err
    assert b"error: a decoding worker process stopped" in err and b"Traceback" not in err


def test_workers_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="workers=0 must be at least 1"):
        check_decode(DecodeConfig(workers=0))
    two = DecodeConfig(workers=2)
    with pytest.raises(ValueError, match="exported model already translates batches side by"):
        check_workers(two, torch.device("cpu"), exported=True)
    with pytest.raises(ValueError, match="workers=2 runs processes side by side on a CPU"):
        check_workers(two, torch.device("cuda"), exported=False)
    check_workers(DecodeConfig(workers=1), torch.device("cuda"), exported=True)  # nothing to refuse


def test_an_input_gives_each_worker_a_batch():
    assert balanced_batch_tokens(DecodeConfig(batch_tokens=6000, workers=2), 9001) == 4501
    assert balanced_batch_tokens(DecodeConfig(batch_tokens=6000, workers=2), 90_000) == 6000
    assert balanced_batch_tokens(DecodeConfig(batch_tokens=6000, workers=1), 100) == 6000
