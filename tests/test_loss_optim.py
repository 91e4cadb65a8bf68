import math
import time

import pytest
import torch
import torch.nn.functional as F

import mt.kernels.loss
from mt.config import TrainConfig
from mt.kernels.loss import label_smoothed_nll
from mt.loggers import ListLogger
from mt.model.embeddings import sinusoidal_table
from mt.training.optim import build_optimizer, build_scheduler, inverse_sqrt, lr_multiplier
from mt.training.trainer import Trainer
from tests.conftest import small_run


def test_without_smoothing_equals_cross_entropy_ignoring_pad():
    logits = torch.randn(2, 5, 11)
    target = torch.randint(1, 11, (2, 5))
    target[1, 3:] = 0
    loss, nll, n = label_smoothed_nll(logits, target, epsilon=0.0, pad_id=0)
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(nll, ref)
    assert int(n) == 8


def test_smoothing_matches_definition():
    logits = torch.randn(1, 3, 7)
    target = torch.tensor([[2, 4, 0]])
    eps = 0.1
    loss, _, _ = label_smoothed_nll(logits, target, epsilon=eps, pad_id=0)
    log_probs = logits.log_softmax(-1)[0, :2]
    q = torch.full((2, 7), eps / 7)
    q[0, 2] += 1 - eps
    q[1, 4] += 1 - eps
    torch.testing.assert_close(loss, -(q * log_probs).sum())


def test_inverse_sqrt_schedule_peaks_at_warmup():
    assert inverse_sqrt(1, warmup_steps=100) == pytest.approx(0.01)
    assert inverse_sqrt(100, warmup_steps=100) == pytest.approx(1.0)
    assert inverse_sqrt(400, warmup_steps=100) == pytest.approx(0.5)
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=2e-3, warmup_steps=4)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-3 / 4)  # update 1
    assert lrs[3] == pytest.approx(2e-3)  # update 4 = warmup: the peak
    assert lrs[15] == pytest.approx(2e-3 * math.sqrt(4 / 16))


def test_budget_schedules_warm_up_then_reach_zero_when_the_budget_is_spent():
    for decay in ("linear", "cosine"):
        assert lr_multiplier(1, 0.0, warmup_steps=10, decay=decay) == pytest.approx(0.1)
        assert lr_multiplier(10, 0.0, warmup_steps=10, decay=decay) == pytest.approx(1.0)
        assert lr_multiplier(500, 1.0, warmup_steps=10, decay=decay) == 0.0
        assert lr_multiplier(500, 1.7, warmup_steps=10, decay=decay) == 0.0  # past the budget
    assert lr_multiplier(50, 0.25, warmup_steps=10, decay="linear") == pytest.approx(0.75)
    assert lr_multiplier(50, 0.25, warmup_steps=10, decay="cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    # Warm-up and decay multiply: a budget spent during the warm-up lowers the ramp too.
    assert lr_multiplier(5, 0.5, warmup_steps=10, decay="linear") == pytest.approx(0.25)
    # inverse_sqrt ignores the budget.
    assert lr_multiplier(400, 0.9, warmup_steps=100, decay="inverse_sqrt") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="train.lr_decay='step'"):
        lr_multiplier(1, 0.0, warmup_steps=1, decay="step")


def test_scheduler_follows_the_budget_it_is_told():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, lr_decay="linear")
    opt = build_optimizer(model, cfg)
    spent = {"value": 0.0}
    sched = build_scheduler(opt, cfg, lambda steps_done: spent["value"])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    spent["value"] = 0.6
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4e-3)


def test_trainer_decays_linearly_to_zero_over_max_steps(tmp_path):
    logger = ListLogger()
    cfg = small_run(tmp_path, max_steps=8, warmup_steps=2, lr=1e-3, lr_decay="linear")
    trainer = Trainer(cfg, tmp_path / "run", logger=logger)
    trainer.fit()
    assert trainer.progress.step == 8
    logged = {step: m["train/lr"] for step, m in logger.records if "train/lr" in m}
    # Logged after update k: the rate of update k+1 = peak x warm-up x (1 - k / 8).
    assert logged[2] == pytest.approx(1e-3 * (1 - 2 / 8))
    assert logged[6] == pytest.approx(1e-3 * (1 - 6 / 8))
    assert trainer.updater.optimizer.param_groups[0]["lr"] == 0.0  # the budget is spent


def test_wall_clock_budget_counts_for_the_decay(tmp_path):
    cfg = small_run(tmp_path, max_steps=1000, max_epochs=None, max_minutes=2.0, lr_decay="cosine")
    trainer = Trainer(cfg, tmp_path / "run", logger=ListLogger())
    budget = trainer.budget
    budget.started = time.monotonic() - 60  # one of the two minutes gone
    assert budget.clock_fraction() == pytest.approx(0.5, abs=0.01)
    budget.clock_spent = budget.clock_fraction()
    assert budget.spent(10, trainer.progress) == pytest.approx(0.5, abs=0.01)  # nearer than 10/1000
    assert budget.spent(900, trainer.progress) == pytest.approx(0.9)  # the step limit is nearer


def test_sinusoidal_table_matches_paper_formula():
    table = sinusoidal_table(50, 8)
    pos, i = 7, 3
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)))
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)))


def reference_smoothed_loss(logits, target, eps, pad_id):
    """The textbook composition, for comparison."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    loss = (1 - eps) * nll - eps * log_probs.mean(-1)
    return loss.masked_fill(target == pad_id, 0.0).sum()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_hand_written_backward_matches_autograd(eps):
    logits = torch.randn(3, 6, 13, requires_grad=True)
    target = torch.randint(1, 13, (3, 6))
    target[0, 4:] = 0
    loss, _, _ = label_smoothed_nll(logits, target, epsilon=eps, pad_id=0)
    (grad,) = torch.autograd.grad(loss * 0.7, logits)
    ref_logits = logits.detach().double().requires_grad_()
    ref = reference_smoothed_loss(ref_logits, target, eps, 0)
    (ref_grad,) = torch.autograd.grad(ref * 0.7, ref_logits)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    assert grad[0, 4:].abs().sum() == 0  # padding gets no gradient


def test_blocks_of_rows_give_the_same_loss_and_gradient(monkeypatch):
    """The loss walks the logits in cache-sized blocks: an uneven last block changes nothing."""
    logits = torch.randn(2, 5, 13, requires_grad=True)  # N = 10 rows
    target = torch.randint(1, 13, (2, 5))
    target[1, 3:] = 0
    monkeypatch.setattr(mt.kernels.loss, "CPU_BLOCK_VALUES", 3 * 13)  # blocks of 3, 3, 3 and 1 rows
    loss, _, _ = label_smoothed_nll(logits, target, epsilon=0.1, pad_id=0)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().double().requires_grad_()
    ref = reference_smoothed_loss(ref_logits, target, 0.1, 0)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)


def test_bf16_logits_are_scored_in_float32_and_get_a_bf16_gradient():
    """Under autocast the logits arrive in bf16: no float32 copy of them is made, but the
    arithmetic is float32, so the loss equals the float64 loss of the same bf16 values."""
    logits = (torch.randn(4, 7, 50) * 4).bfloat16().requires_grad_()
    target = torch.randint(1, 50, (4, 7))
    target[2, 5:] = 0
    loss, _, _ = label_smoothed_nll(logits, target, epsilon=0.1, pad_id=0)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().double().requires_grad_()
    ref = reference_smoothed_loss(ref_logits, target, 0.1, 0)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-2, atol=1e-3)  # bf16 rounding


def test_without_gradients_the_loss_is_the_same():
    logits = torch.randn(3, 4, 9)
    target = torch.randint(1, 9, (3, 4))
    with torch.no_grad():
        loss, _, _ = label_smoothed_nll(logits, target, epsilon=0.1, pad_id=0)
    ref = reference_smoothed_loss(logits.double(), target, 0.1, 0)
    torch.testing.assert_close(loss.double(), ref)
    assert not loss.requires_grad
