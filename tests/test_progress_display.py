"""The progress display: where a run is in its budget, as a bar on a terminal and as periodic
log lines in a file."""

import io
import logging

from conftest import small_run

from mt.config import TrainConfig
from mt.loggers import ListLogger
from mt.training.budget import Budget
from mt.training.progress import Progress
from mt.training.progress_display import ProgressDisplay, budget_position, clock


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def at(budget: Budget, seconds: float) -> Budget:
    budget.seconds = lambda: seconds  # the clock, frozen
    return budget


def test_a_clock_budget_predicts_its_updates_and_the_time_left():
    budget = at(Budget(TrainConfig(max_minutes=50)), 600.0)
    pos = budget_position(budget, Progress(step=400))
    assert pos.where == "10.0/50 min" and pos.unit == "min"
    assert pos.fraction == 0.2
    assert pos.predicted_updates == 2000
    assert clock(pos.seconds_left) == "40:00"


def test_the_nearest_limit_is_shown():
    # 30 of 100 updates (0.3) is nearer its end than 10 of 50 minutes (0.2).
    budget = at(Budget(TrainConfig(max_minutes=50, max_steps=100)), 600.0)
    pos = budget_position(budget, Progress(step=30))
    assert (pos.where, pos.predicted_updates) == ("30/100 updates", 100)
    assert clock(pos.seconds_left) == "23:20"  # 600 s for 30 updates, 70 to go
    budget = at(Budget(TrainConfig(max_epochs=3, max_minutes=None)), 60.0)
    budget.batches_per_epoch = 100
    pos = budget_position(budget, Progress(step=150, epoch=1, batch_in_epoch=50))
    assert (pos.where, pos.fraction, pos.predicted_updates) == ("1.5/3 epochs", 0.5, 300)
    assert clock(3725) == "1:02:05"


def test_a_log_file_gets_one_line_every_n_updates(caplog):
    budget = at(Budget(TrainConfig(max_minutes=None, max_steps=10)), 20.0)
    stream = io.StringIO()
    display = ProgressDisplay(
        budget, enabled=True, every_steps=5, initial=Progress(), stream=stream
    )
    with caplog.at_level(logging.INFO, logger="mt.training.trainer"):
        for step in range(1, 11):
            if step == 4:
                display.trained(2.3456, 1234.0)
                display.validated({"val/loss": 2.0, "val/bleu": 12.345}, step)
            display.update(Progress(step=step))
    display.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == (
        "5/10 updates | ETA 0:20 | loss 2.346 | 1,234 tok/s | val BLEU 12.35 (update 4)"
    )
    assert lines[1].startswith("10/10 updates | ETA 0:00")
    assert stream.getvalue() == ""  # no carriage-return redraws in a file


def test_a_terminal_gets_a_bar_with_the_budget():
    budget = at(Budget(TrainConfig(max_minutes=50)), 600.0)
    screen = Terminal()
    display = ProgressDisplay(
        budget, enabled=True, every_steps=5, initial=Progress(), stream=screen
    )
    display.update(Progress(step=400))
    display.close()
    shown = screen.getvalue()
    assert "20%|" in shown
    assert "10.0/50 min | update 400 of ~2,000 | ETA 40:00" in shown


def test_disabled_shows_nothing(caplog):
    screen = Terminal()
    budget = at(Budget(TrainConfig(max_minutes=50)), 600.0)
    display = ProgressDisplay(
        budget, enabled=False, every_steps=1, initial=Progress(), stream=screen
    )
    with caplog.at_level(logging.INFO, logger="mt.training.trainer"):
        display.update(Progress(step=1))
    display.close()
    assert screen.getvalue() == "" and not caplog.records


def test_a_run_logs_its_progress_lines(tmp_path, caplog):
    from mt.training.trainer import Trainer

    cfg = small_run(tmp_path, max_steps=8, progress_bar=True, progress_every_steps=4)
    with caplog.at_level(logging.INFO, logger="mt.training.trainer"):
        Trainer(cfg, tmp_path / "run", logger=ListLogger()).fit()
    lines = [r.getMessage() for r in caplog.records if "/8 updates" in r.getMessage()]
    assert [line.split(" |")[0] for line in lines] == ["4/8 updates", "8/8 updates"]
    assert all("ETA" in line and "loss" in line for line in lines)
