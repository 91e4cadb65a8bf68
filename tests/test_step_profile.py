"""The step profile separates matrix products from the rest of a step; its summary arithmetic."""

import torch

from mt.bench.step_profile import MATMUL_OPS, StepProfile, profile_steps


def test_profile_finds_the_products_of_a_training_step():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(256, 64)

    def steps():
        for _ in range(3):
            y = layer(x).relu()
            (y * y).sum().backward()

    prof = profile_steps(steps, torch.device("cpu"))
    assert "aten::addmm" in prof.op_seconds  # the forward
    assert "aten::mm" in prof.op_seconds  # the backward
    assert 0 < prof.seconds_in(MATMUL_OPS) < prof.total_seconds
    assert "aten::addmm" in prof.table


def test_summary_arithmetic():
    prof = StepProfile(
        table="",
        op_seconds={"aten::mm": 2.0, "aten::addmm": 1.0, "aten::bmm": 1.0, "aten::mul": 4.0},
    )
    # 12 model FLOPs; peak 2 FLOP/s.
    s = prof.summary(model_flops=12.0, peak_flop_per_s=2.0, top=2)
    assert s["matmul_share"] == 0.5  # (2 + 1 + 1) / 8
    assert s["linear_matmul_flop_per_s"] == 4  # 12 / (2 + 1): bmm is not in the count
    assert s["ceiling_utilisation"] == 1.5  # 12 / 4 / 2
    assert s["top_ops_share"] == {"aten::mul": 0.5, "aten::mm": 0.25}


def test_summary_without_products():
    s = StepProfile(table="", op_seconds={"aten::mul": 1.0}).summary(1.0, 1.0)
    assert s["matmul_share"] == 0 and s["ceiling_utilisation"] is None
