"""Where a training step's time goes, operator by operator, and the utilisation that allows.

The benchmark's ``train.utilisation`` (model FLOPs / step time / matmul peak) folds two losses
into one number: matrix products running below the peak, and time spent outside matrix products
altogether (casts, dropout masks, softmax, layer norm, the loss, the optimizer). They call for
different fixes -- bigger or better-shaped products for the first, fewer or fused element-wise
passes for the second -- so :func:`profile_steps` separates them with ``torch.profiler``:

- ``matmul_share``: the fraction of the step's operator time spent in matrix products;
- ``linear_matmul_flop_per_s``: the model FLOPs (the benchmark's count, 6 per parameter per
  token) over the time of the products that count covers (``mm``/``addmm``: the linear layers
  and the tied output layer, forward and backward) -- how close those products run to the peak;
- ``ceiling_utilisation``: the model FLOPs over the time of all matrix products (attention's
  ``bmm`` too, which the count leaves out) over the peak -- the utilisation if everything else
  took no time at all. No removal of overheads can lift ``utilisation`` above it. Attention
  inside a fused kernel (``_scaled_dot_product_flash_attention*``, our fp32 path) is not
  counted as a product, which makes the ceiling a looser bound there.

Operator times are the profiler's self times: host time on a CPU; on a GPU, the device time of
the ``aten::`` operators (not yet checked on a GPU: this project's machines have none). The
profiler adds a few microseconds to every operator call, which inflates the share of the many
small element-wise calls a little; the shares are for finding costs, the benchmark's own timing
(unprofiled) stays the measurement.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Matrix products as they appear in profiles of our models and of nn.Transformer.
MATMUL_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::_addmm_activation", "aten::bmm", "aten::baddbmm"}
)
# The products that the model-FLOP count (parameters x tokens) covers: the linear layers.
LINEAR_MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::_addmm_activation"})


@dataclass
class StepProfile:
    table: str  # the profiler's operator table, most expensive first
    op_seconds: dict[str, float]  # self time per operator, summed over the profiled steps

    @property
    def total_seconds(self) -> float:
        return sum(self.op_seconds.values())

    def seconds_in(self, ops: frozenset[str]) -> float:
        return sum(s for name, s in self.op_seconds.items() if name in ops)

    def summary(self, model_flops: float, peak_flop_per_s: float, top: int = 10) -> dict:
        """The numbers above, plus the ``top`` operators' shares of the step."""
        total = self.total_seconds
        matmul = self.seconds_in(MATMUL_OPS)
        linear = self.seconds_in(LINEAR_MATMUL_OPS)
        ranked = sorted(self.op_seconds.items(), key=lambda kv: -kv[1])[:top]
        return {
            "matmul_share": round(matmul / total, 3),
            "linear_matmul_flop_per_s": round(model_flops / linear) if linear else None,
            "ceiling_utilisation": (
                float(f"{model_flops / matmul / peak_flop_per_s:.3g}") if matmul else None
            ),
            "top_ops_share": {name: round(s / total, 3) for name, s in ranked},
        }


def profile_steps(run_steps: Callable[[], None], device: torch.device) -> StepProfile:
    """Run ``run_steps()`` (training steps, ending in a device sync) under ``torch.profiler``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    on_gpu = device.type == "cuda"
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run_steps()
    events = prof.key_averages()
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    seconds = {}
    for e in events:
        if on_gpu and not e.key.startswith("aten::"):
            continue  # the kernels themselves: their time is already their aten op's
        micros = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        if micros > 0:
            seconds[e.key] = seconds.get(e.key, 0.0) + micros / 1e6
    return StepProfile(table=events.table(sort_by=sort_by, row_limit=40), op_seconds=seconds)
