"""StateX on Gated DeltaNet: merge a layer's heads (H key heads and Hv value heads -> H' of each, H' dividing
H and smaller). What a plan may ask, and the per-tensor transforms of one layer.

Merged head j is old key heads j*H/H' .. (j+1)*H/H' - 1 side by side (d_k' = K / H') and the value heads
they serve, old value heads j*Hv/H' .. (j+1)*Hv/H' - 1 (d_v' = V / H'): its state (K / H') x (V / H') holds
every old state as a block, H / H' times more floats in all (grouped value attention ends: one value head
per key head). The projections keep their shapes and rows; what is per value head (a_proj and b_proj rows,
A_log, dt_bias) goes from Hv to H' entries, and o_norm's weight from [V / Hv] to [V / H'].

Modes:
- ``reinit`` (the paper's default): a fresh attention module of H' heads drawn as fla initialises one
  (``init.init_tensor``: N(0, 0.02) projections and convs, fla's A_log and dt_bias draws, o_norm 1), and
  the block's attn_norm reset to 1, as GLA's reinit does.
- ``merge``: q/k/v/g/o projections, convs and attn_norm kept; each merged head's a_proj and b_proj rows,
  A_log and dt_bias are the mean of those of the Hv / H' value heads it merges; o_norm's weight (one value
  head's, shared by all) tiled over the merged width. The mean is taken in the parameters' own space: where
  the merged heads agree (fla's rows differ only by their random draws) it gives their value exactly; a_proj
  and b_proj rows and dt_bias enter their softplus / sigmoid linearly, so the merged decay and write
  strength are taken at the average head's pre-activation, and the mean of A_log is the geometric mean of
  the rates A (log space, where fla trains them). Any choice changes the layer at step 0: every merged
  column now decays and writes at one rate, and q^T S sums over all the merged key channels.

Step-0 distance from the source, measured on a random fla model (tests.fla_reference.make_fla_gdn: fla's
init, norm weights perturbed by N(0, 0.1); hidden 64, 3 layers of 2 key heads of 16 and 4 value heads of 16;
short convs and output gate on; 2 x 64 tokens; layer 1 merged into 1 head of 32 x 64, fp32):
max |logits - source's| / max |source's| = 0.14 with ``merge`` and 0.24 with ``reinit``; mean absolute
difference of the next-token log-probabilities 0.011 and 0.020 (tests/test_statex_tensors.py measures them
again). ``merge`` keeps the layer nearer its source, neither leaves it unchanged.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from statex_dist.archs.gdn import init
from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gdn.layout import block_specs
from statex_dist.archs.record import Expansion
from statex_dist.statex.tensors import check_shape

if TYPE_CHECKING:
    from statex_dist.statex.plan import ExpansionPlan

PER_VALUE_HEAD = ("attn.a_proj.weight", "attn.b_proj.weight", "attn.A_log", "attn.dt_bias")
UNTOUCHED_PREFIXES = ("mlp.", "mlp_norm.")


def plan_options(config: GDNConfig, layers: list[int], heads: Optional[int],
                 gate_bias_init: Optional[tuple[float, float]]) -> dict:
    """The plan's Gated DeltaNet field: ``heads`` heads per expanded layer (default 1: merge them all)."""
    return {"heads": heads or 1, "gate_bias_init": tuple(gate_bias_init) if gate_bias_init else None}


def validate(config: GDNConfig, plan: ExpansionPlan) -> None:
    """Raise ValueError when ``plan`` does not apply to ``config``; every message names the constraint."""
    if plan.d_state is not None:
        raise ValueError("d_state applies to Mamba2 models; a Gated DeltaNet expansion sets heads")
    if plan.gate_bias_init is not None:
        raise ValueError("gate_bias_init applies to GLA models only")
    for i in plan.layers:
        h = config.num_heads[i]
        if plan.heads < 1 or plan.heads >= h or h % plan.heads:
            valid = [d for d in range(1, h) if h % d == 0]
            raise ValueError(
                f"layer {i} has {h} heads: heads={plan.heads} must divide {h} and be smaller; "
                + (f"valid values: {valid}" if valid else "this layer has one head and cannot merge further"))


def resize(config: GDNConfig, layers: tuple[int, ...], heads: int) -> dict:
    """The expanded config's per-layer heads: ``heads`` key and value heads in each chosen layer."""
    return {"num_heads": [heads if i in layers else h for i, h in enumerate(config.num_heads)],
            "num_v_heads": [heads if i in layers else h for i, h in enumerate(config.num_v_heads)]}


def expand_gdn_layer(name: str, local: str, tensor: torch.Tensor, layer: int, old: GDNConfig,
                     new: GDNConfig, plan: ExpansionPlan) -> torch.Tensor:
    """The new tensor for parameter ``local`` (the name after ``layers.{layer}.``) of an expanded layer."""
    if local.startswith(UNTOUCHED_PREFIXES):
        return tensor
    old_specs, new_specs = block_specs(old, layer, 1), block_specs(new, layer, 1)
    if local not in old_specs:
        raise ValueError(f"{name}: no StateX rule for this Gated DeltaNet parameter")
    check_shape(name, tensor, old_specs[local].shape)
    shape = new_specs[local].shape
    if plan.init == "reinit":
        if local == "attn_norm.weight":
            return torch.ones_like(tensor)
        fresh = init.init_tensor(name, shape, new, seed=plan.seed)
        return fresh.to(dtype=tensor.dtype, device=tensor.device)
    if local in PER_VALUE_HEAD:  # [Hv, ...] -> [H', ...]: the mean over the value heads each one merges
        merged = tensor.float().reshape(shape[0], -1, *tensor.shape[1:]).mean(1)
        return merged.to(tensor.dtype)
    if local == "attn.o_norm.weight":  # one value head's weight, shared by the heads now merged
        return tensor.repeat(shape[0] // tensor.shape[0])
    return tensor   # projections, convs, attn_norm: same shapes, kept


EXPANSION = Expansion(
    modes=("reinit", "merge"), option="heads", per_layer="num_heads",
    option_help="heads of each expanded layer (default 1)",
    plan_options=plan_options, validate=validate, expand_layer=expand_gdn_layer, resize=resize)
