"""A training run whose cores other processes share says so once, with the threads to use."""

import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import small_run

from mt.loggers import ListLogger
from mt.training import shared_cores, trainer
from mt.training.shared_cores import shared_cores_warning, thread_waits


def test_threads_that_waited_for_their_cores_are_named_with_the_threads_to_use():
    before = {1: 10.0, 2: 3.0, 3: 0.0}
    after = {1: 14.0, 2: 57.0, 3: 0.0, 4: 1.0}  # 59 s of waiting in 120 s; 4 is a new thread
    warning = shared_cores_warning(before, after, seconds=120, threads=2)
    assert "in the last 2.0 minutes its threads waited for a CPU 0.5 cores' worth" in warning
    assert "train.num_threads=1 (now 2)" in warning
    assert "num_threads=7 (now 8)" in shared_cores_warning(before, after, 120, 8)  # one core
    assert "num_threads=6 (now 8)" in shared_cores_warning({}, {1: 80.0, 2: 40.0}, 120, 8)  # two
    assert "num_threads=1 (now 2)" in shared_cores_warning({}, {1: 240.0}, 120, 2)  # at least 1
    assert shared_cores_warning(before, {1: 22.0, 2: 15.0}, 120, 2) is None  # 0.2 of a core
    assert shared_cores_warning(before, after, seconds=60, threads=2) is None  # too short
    assert shared_cores_warning(before, after, seconds=120, threads=1) is None  # nothing to drop


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux's scheduler statistics")
def test_the_kernel_counts_a_thread_waiting_for_a_core_another_process_holds():
    me = threading.get_native_id()
    assert me in thread_waits()
    cpu = min(os.sched_getaffinity(0))
    affinity = os.sched_getaffinity(0)
    spin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.3)  # the spinner is running
        before, start = thread_waits()[me], time.monotonic()
        while time.monotonic() - start < 1.0:
            pass  # ready to run all along; the spinner holds the core half the time
        waited = thread_waits()[me] - before
    finally:
        os.sched_setaffinity(0, affinity)
        spinner.kill()
        spinner.wait(timeout=10)
    assert waited > shared_cores.WAIT_SHARE * (time.monotonic() - start)


def test_a_run_warns_once_when_its_cores_are_shared(tmp_path, monkeypatch, caplog):
    clock = iter(range(0, 10_000, 5))  # every look at the waits: 5 s more waited by thread 7
    monkeypatch.setattr(shared_cores, "thread_waits", lambda: {7: float(next(clock))})
    monkeypatch.setattr(shared_cores, "MIN_WINDOW_SECONDS", 0.0)
    monkeypatch.setattr(trainer, "cpu_threads", lambda device, dist: 2)
    cfg = small_run(tmp_path, max_steps=6, val_every_steps=100)
    with caplog.at_level(logging.WARNING, logger="mt.training.shared_cores"):
        trainer.Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    warnings = [
        r.getMessage() for r in caplog.records if "using this run's cores" in r.getMessage()
    ]
    assert len(warnings) == 1 and "train.num_threads=1 (now 2)" in warnings[0]

    # A run on cores of its own is not warned.
    caplog.clear()
    monkeypatch.setattr(shared_cores, "thread_waits", lambda: {7: 0.0})
    with caplog.at_level(logging.WARNING, logger="mt.training.shared_cores"):
        trainer.Trainer(cfg, tmp_path / "alone", logger=ListLogger()).fit()
    assert "using this run's cores" not in caplog.text
