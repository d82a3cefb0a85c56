"""What to expand and how (``ExpansionPlan``), and the expanded model's config (``expand_config``).

What a plan may ask of an architecture is that architecture's (``archs.of(config).expansion``): its modes,
which per-layer shape grows and its checks (``statex_dist/archs/<name>/expansion.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass
from typing import Optional

from statex_dist import archs
from statex_dist.models.config import ModelConfig
from statex_dist.statex.layers import choose_layers


@dataclass(frozen=True)
class ExpansionPlan:
    """One StateX expansion.

    Attributes:
        layers: indices of the layers to enlarge (see ``choose_layers``).
        heads: GLA and Gated DeltaNet: heads H' of an expanded layer; must divide its heads H and be
            smaller (1 = merge all).
        gla_heads: the earlier name of ``heads`` (a keyword only; ``plan.gla_heads`` reads ``heads``).
        d_state: Mamba2 only: the expanded layers' d_state N' (> their N).
        init: one of the architecture's modes: GLA ``reinit`` | ``merge``; Mamba2 ``reinit`` | ``copy`` |
            ``zero`` | ``preserve`` (statex_dist/archs/<name>/expansion.py says what each does).
        seed: seeds every random tensor together with the parameter's name.
        gate_bias_init: GLA ``reinit`` only: draw gk_proj.1.bias from U(lo, hi) instead of zeros.
    """
    layers: tuple[int, ...]
    heads: int = 1
    d_state: Optional[int] = None
    init: str = "reinit"
    seed: int = 0
    gate_bias_init: Optional[tuple[float, float]] = None
    gla_heads: InitVar[Optional[int]] = None

    def __post_init__(self, gla_heads: Optional[int]):
        object.__setattr__(self, "layers", tuple(self.layers))
        if gla_heads is not None:
            object.__setattr__(self, "heads", gla_heads)
        known = sorted({m for a in archs.ARCHS.values() for m in a.expansion.modes})
        if self.init not in known:
            raise ValueError(f"init={self.init!r} is unknown; expected one of {known}")
        if self.gate_bias_init is not None:
            lo, hi = (float(x) for x in self.gate_bias_init)
            if not lo <= hi:
                raise ValueError(f"gate_bias_init=({lo}, {hi}) needs lo <= hi")
            object.__setattr__(self, "gate_bias_init", (lo, hi))

    @classmethod
    def for_model(cls, config: ModelConfig, every: Optional[int] = None, layers: Optional[list[int]] = None,
                  heads: Optional[int] = None, d_state: Optional[int] = None, init: Optional[str] = None,
                  seed: int = 0, gate_bias_init: Optional[tuple[float, float]] = None,
                  gla_heads: Optional[int] = None) -> "ExpansionPlan":
        """The plan for ``config`` from what a user gave (the run config's ``expansion`` section or the
        tool's flags), with the defaults filled in: layers 0, 6, 12, ... (``choose_layers``), the
        architecture's first mode (``reinit``) and its own defaults (1 head for GLA and Gated DeltaNet, a
        Mamba2 d_state of 4x the largest chosen layer's); options of other architectures are left out.
        ``gla_heads``: the earlier name of ``heads``."""
        chosen = choose_layers(config.num_layers, every=every, layers=layers)
        expansion = archs.of(config).expansion
        given = {"heads": heads if heads is not None else gla_heads, "d_state": d_state}[expansion.option]
        return cls(layers=chosen, init=init or expansion.modes[0], seed=seed,
                   **expansion.plan_options(config, chosen, given, gate_bias_init))


def validate(config: ModelConfig, plan: ExpansionPlan) -> None:
    """Raise ValueError when ``plan`` does not apply to ``config``; every message names the constraint."""
    arch, modes = config.arch, archs.of(config).expansion.modes
    if plan.init not in modes:
        raise ValueError(f"init={plan.init!r} is not a {arch} mode; {arch} supports {list(modes)}")
    choose_layers(config.num_layers, layers=plan.layers)
    archs.of(config).expansion.validate(config, plan)


def expand_config(config: ModelConfig, plan: ExpansionPlan) -> ModelConfig:
    """The expanded model's config: the chosen layers' per-layer shape (GLA and Gated DeltaNet heads, Mamba2
    d_state) set to the plan's, and the chosen layers added to ``expanded_layers``. The input config is not
    modified."""
    validate(config, plan)
    expansion = archs.of(config).expansion
    expanded = sorted(set(config.expanded_layers) | set(plan.layers))
    new = getattr(plan, expansion.option)
    if expansion.resize is not None:
        fields = expansion.resize(config, plan.layers, new)
    else:
        fields = {expansion.per_layer: [new if i in plan.layers else v
                                        for i, v in enumerate(getattr(config, expansion.per_layer))]}
    return dataclasses.replace(config, **fields, expanded_layers=expanded)


# ``plan.gla_heads`` reads ``heads``: set after the dataclass is made, whose __init__ keeps the keyword
ExpansionPlan.gla_heads = property(lambda self: self.heads, doc="the earlier name of ``heads``")
