"""R-Drop: the symmetric-KL consistency loss and the trainer's doubled batch."""

import pytest
import torch
import torch.nn.functional as F

import mt.kernels.loss
from mt.checks import validate_run_config
from mt.config import ModelConfig, RunConfig, TrainConfig
from mt.kernels.loss import symmetric_kl
from mt.loggers import ListLogger
from mt.training.trainer import Trainer
from tests.conftest import small_run


def reference_symmetric_kl(logits_p, logits_q, target, pad_id):
    """The textbook composition in float64, for comparison."""
    log_p = F.log_softmax(logits_p.double(), dim=-1)
    log_q = F.log_softmax(logits_q.double(), dim=-1)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (0.5 * (kl_pq + kl_qp)).masked_fill(target == pad_id, 0.0).sum()


def both_gradients(loss, logits_p, logits_q):
    return torch.autograd.grad(loss * 0.7, (logits_p, logits_q))


def test_symmetric_kl_and_its_gradients_match_autograd_across_uneven_blocks(monkeypatch):
    logits_p = (torch.randn(3, 5, 13) * 3).requires_grad_()  # N = 15 rows
    logits_q = (torch.randn(3, 5, 13) * 3).requires_grad_()
    target = torch.randint(1, 13, (3, 5))
    target[0, 3:] = 0
    monkeypatch.setattr(mt.kernels.loss, "CPU_BLOCK_VALUES", 4 * 13)  # blocks of 4, 4, 4 and 3 rows
    kl = symmetric_kl(logits_p, logits_q, target, pad_id=0)
    grad_p, grad_q = both_gradients(kl, logits_p, logits_q)
    ref_p = logits_p.detach().double().requires_grad_()
    ref_q = logits_q.detach().double().requires_grad_()
    ref = reference_symmetric_kl(ref_p, ref_q, target, 0)
    ref_grad_p, ref_grad_q = both_gradients(ref, ref_p, ref_q)
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_p.double(), ref_grad_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_q.double(), ref_grad_q, rtol=1e-5, atol=1e-6)
    assert grad_p[0, 3:].abs().sum() == 0 and grad_q[0, 3:].abs().sum() == 0  # padding


def test_identical_passes_cost_nothing_and_get_no_gradient():
    logits = torch.randn(2, 4, 9)
    logits_p, logits_q = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    kl = symmetric_kl(logits_p, logits_q, torch.ones(2, 4, dtype=torch.long), pad_id=0)
    grad_p, grad_q = both_gradients(kl, logits_p, logits_q)
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    assert grad_p.abs().max() < 1e-6 and grad_q.abs().max() < 1e-6


def test_bf16_logits_get_float32_arithmetic_and_bf16_gradients():
    logits_p = (torch.randn(2, 6, 40) * 3).bfloat16().requires_grad_()
    logits_q = (torch.randn(2, 6, 40) * 3).bfloat16().requires_grad_()
    target = torch.randint(1, 40, (2, 6))
    kl = symmetric_kl(logits_p, logits_q, target, pad_id=0)
    grad_p, _ = both_gradients(kl, logits_p, logits_q)
    ref_p = logits_p.detach().double().requires_grad_()
    ref = reference_symmetric_kl(ref_p, logits_q.detach().double(), target, 0)
    (ref_grad_p,) = torch.autograd.grad(ref * 0.7, ref_p)
    assert kl.dtype == torch.float32 and grad_p.dtype == torch.bfloat16
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_p.double(), ref_grad_p, rtol=1e-2, atol=1e-3)


def test_trainer_loss_is_the_mean_of_two_passes_plus_half_alpha_times_their_kl(tmp_path):
    cfg = small_run(tmp_path, model=dict(dropout=0.3), rdrop_alpha=4.0, max_steps=1)
    trainer = Trainer(cfg, tmp_path / "run", logger=ListLogger())
    batch = next(iter(trainer.data.train.batches(300)))

    def loss_with(alpha: float, train: bool) -> tuple[float, float]:
        trainer.cfg.train.rdrop_alpha = alpha
        trainer.updater.train_model.train(train)
        torch.manual_seed(7)  # the same dropout masks for every call
        loss_sum, nll_sum = trainer.updater.batch_loss(batch)
        return loss_sum.item(), nll_sum.item()

    plain = loss_with(0.0, train=False)
    # Without dropout both halves of the doubled batch agree: the plain loss, no KL.
    assert loss_with(4.0, train=False) == pytest.approx(plain, rel=1e-5)
    # With dropout the halves get different masks, so the KL term is positive and scales
    # with alpha on top of the same two cross-entropies.
    without_kl, _ = loss_with(1e-12, train=True)
    with_kl, _ = loss_with(4.0, train=True)
    kl_term = with_kl - without_kl
    assert kl_term > 0.01 * without_kl
    assert loss_with(8.0, train=True)[0] - without_kl == pytest.approx(2 * kl_term, rel=1e-4)


def test_training_with_rdrop_lowers_the_loss(tmp_path):
    logger = ListLogger()
    cfg = small_run(
        tmp_path, model=dict(dropout=0.1), rdrop_alpha=1.0, max_steps=30, warmup_steps=3
    )
    trainer = Trainer(cfg, tmp_path / "run", logger=logger)
    trainer.fit()
    losses = [m["train/loss"] for _, m in logger.records if "train/loss" in m]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize(
    ("model", "alpha", "message"),
    [
        (ModelConfig(dropout=0.0, attention_dropout=0.0), 1.0, "both passes would be identical"),
        (ModelConfig(dropout=0.1), -1.0, r"train.rdrop_alpha=-1.0 must be 0 \(off\) or more"),
    ],
)
def test_rdrop_settings_that_cannot_work_are_refused(model, alpha, message):
    with pytest.raises(ValueError, match=message):
        validate_run_config(RunConfig(model=model, train=TrainConfig(rdrop_alpha=alpha)))
