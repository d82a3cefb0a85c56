"""StateX on Mamba2: grow a layer's d_state (N -> N'). What a plan may ask, and the per-tensor transforms of
one layer.

Shapes: D hidden, E d_inner, G ngroups, Hh heads, W conv width. in_proj rows pack [z | x | B | C | dt]
with widths [E, E, G*N, G*N, Hh]; the conv channels pack [x | B | C] with widths [E, G*N, G*N]. B and C
are group-major (group g holds rows g*N .. (g+1)*N of its block); only B and C grow.

Modes: ``reinit`` (the paper's default) redraws every B/C row and conv channel and resets A_log, dt_bias and
the norm; ``copy`` tiles the old rows; ``zero`` keeps them and zero-pads (the output is unchanged, but
B_new = C_new = 0 is a saddle point: each one's gradient is proportional to the other, so both stay zero
and the run equals LPT); ``preserve`` keeps the old rows, draws the new B and C rows of in_proj as
``reinit`` does, draws the new B conv channels and zeroes the new C conv channels (taps and bias): the
output is unchanged at step 0 and the new rows train.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.archs.record import Expansion
from statex_dist.statex.tensors import check_shape, default_bound, generator, uniform

if TYPE_CHECKING:
    from statex_dist.statex.plan import ExpansionPlan


def plan_options(config: Mamba2Config, layers: list[int], d_state: Optional[int],
                 gate_bias_init: Optional[tuple[float, float]]) -> dict:
    """The plan's Mamba2 field: the expanded layers' d_state (default 4x the largest chosen layer's)."""
    return {"d_state": d_state or 4 * max(config.d_state[i] for i in layers)}


def validate(config: Mamba2Config, plan: ExpansionPlan) -> None:
    """Raise ValueError when ``plan`` does not apply to ``config``; every message names the constraint."""
    if plan.gate_bias_init is not None:
        raise ValueError("gate_bias_init applies to GLA models only")
    if plan.d_state is None:
        raise ValueError("a Mamba2 expansion needs d_state (the new N of the chosen layers)")
    for i in plan.layers:
        n = config.d_state[i]
        if plan.d_state <= n:
            raise ValueError(f"layer {i} has d_state {n}: the target d_state {plan.d_state} must be > {n}")


def _drawer(gen: torch.Generator, bound: float, like: torch.Tensor):
    """shape -> U(-bound, bound) from ``gen``; successive calls continue the stream (B, then C)."""
    return lambda shape: uniform(shape, -bound, bound, gen, like)


def _grow(block: torch.Tensor, G: int, N: int, N2: int, mode: str, fresh, new_rows: str = "fresh") -> torch.Tensor:
    """B or C rows [G*N, ...] -> [G*N2, ...]. ``fresh(shape)`` draws the ``reinit`` values.

    ``preserve`` keeps each group's N rows and fills its N2 - N new rows with ``fresh`` values, or with zeros
    where ``new_rows="zero"`` (the new C channels' conv taps and bias).
    """
    rest = block.shape[1:]
    if mode == "reinit":
        return fresh((G * N2, *rest))
    per_group = block.reshape(G, N, *rest)
    if mode == "copy":  # tile each group's N rows, then cut to N'
        reps = math.ceil(N2 / N)
        grown = per_group.repeat(1, reps, *([1] * len(rest)))[:, :N2]
    else:  # zero / preserve: the old rows in place, new rows after them in each group
        grown = per_group.new_zeros((G, N2, *rest))
        grown[:, :N] = per_group
        if mode == "preserve" and new_rows == "fresh":
            grown[:, N:] = fresh((G, N2 - N, *rest))
    return grown.reshape(G * N2, *rest)


def expand_mamba2_layer(name: str, local: str, tensor: torch.Tensor, layer: int, old: Mamba2Config,
                        new: Mamba2Config, plan: ExpansionPlan) -> torch.Tensor:
    """The new tensor for parameter ``local`` (the name after ``layers.{layer}.``) of an expanded layer."""
    E, G, Hh, W, D = old.d_inner, old.ngroups, old.nheads, old.d_conv, old.hidden_size
    N, N2, mode = old.d_state[layer], new.d_state[layer], plan.init
    gen = generator(plan.seed, name)
    if local == "norm.weight" or local in ("mixer.D", "mixer.out_proj.weight"):
        return tensor
    if local == "mixer.in_proj.weight":
        check_shape(name, tensor, (2 * E + 2 * G * N + Hh, D))
        zx, B, C, dt = tensor.split([2 * E, G * N, G * N, Hh])
        fresh = _drawer(gen, default_bound(D), tensor)  # nn.Linear's default, fan_in = D
        return torch.cat([zx, _grow(B, G, N, N2, mode, fresh), _grow(C, G, N, N2, mode, fresh), dt])
    if local in ("mixer.conv1d.weight", "mixer.conv1d.bias"):
        want = (E + 2 * G * N, 1, W) if local.endswith("weight") else (E + 2 * G * N,)
        check_shape(name, tensor, want)
        x, B, C = tensor.split([E, G * N, G * N])
        fresh = _drawer(gen, default_bound(W), tensor)  # depthwise nn.Conv1d: fan_in = 1 * W, weight and bias
        # preserve: C_new = SiLU(conv(.) + 0) = 0 with zero taps and bias, so the layer's output is unchanged,
        # while B_new (fresh taps) makes the new state rows non-zero and gives C_new's taps a gradient at once
        return torch.cat([x, _grow(B, G, N, N2, mode, fresh), _grow(C, G, N, N2, mode, fresh, new_rows="zero")])
    if local in ("mixer.dt_bias", "mixer.A_log", "mixer.norm.weight"):
        check_shape(name, tensor, (E,) if local == "mixer.norm.weight" else (Hh,))
        if mode != "reinit":
            return tensor
        if local == "mixer.A_log":  # A = -(1..Hh), as a freshly built mixer
            a = torch.log(torch.arange(1, Hh + 1, dtype=torch.float32))
            return a.to(dtype=tensor.dtype, device=tensor.device)
        return torch.ones_like(tensor)
    raise ValueError(f"{name}: no StateX rule for this Mamba2 parameter")


EXPANSION = Expansion(
    modes=("reinit", "copy", "zero", "preserve"), option="d_state", per_layer="d_state",
    option_help="d_state of each expanded layer, larger than the current one (default 4x)",
    plan_options=plan_options, validate=validate, expand_layer=expand_mamba2_layer)
