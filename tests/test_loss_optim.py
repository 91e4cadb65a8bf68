import math

import pytest
import torch
import torch.nn.functional as F

from mt.config import TrainConfig
from mt.loss import label_smoothed_nll
from mt.modules.embeddings import sinusoidal_table
from mt.optim import build_optimizer, build_scheduler, inverse_sqrt


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
