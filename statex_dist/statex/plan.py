"""What to expand and how (``ExpansionPlan``), and the expanded model's config (``expand_config``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from statex_dist.models.config import GLAConfig, Mamba2Config, ModelConfig
from statex_dist.statex.layers import choose_layers

INITS = {"gla": ("reinit", "merge"), "mamba2": ("reinit", "copy", "zero", "preserve")}


@dataclass(frozen=True)
class ExpansionPlan:
    """One StateX expansion.

    Attributes:
        layers: indices of the layers to enlarge (see ``choose_layers``).
        gla_heads: GLA only: heads H' of an expanded layer; must divide its heads H (1 = merge all).
        d_state: Mamba2 only: the expanded layers' d_state N' (> their N).
        init: GLA ``reinit`` | ``merge``; Mamba2 ``reinit`` | ``copy`` | ``zero`` | ``preserve``
            (statex_dist.statex.mamba2 says what each does).
        seed: seeds every random tensor together with the parameter's name.
        gate_bias_init: GLA ``reinit`` only: draw gk_proj.1.bias from U(lo, hi) instead of zeros.
    """
    layers: tuple[int, ...]
    gla_heads: int = 1
    d_state: Optional[int] = None
    init: str = "reinit"
    seed: int = 0
    gate_bias_init: Optional[tuple[float, float]] = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        known = sorted({m for modes in INITS.values() for m in modes})
        if self.init not in known:
            raise ValueError(f"init={self.init!r} is unknown; expected one of {known}")
        if self.gate_bias_init is not None:
            lo, hi = (float(x) for x in self.gate_bias_init)
            if not lo <= hi:
                raise ValueError(f"gate_bias_init=({lo}, {hi}) needs lo <= hi")
            object.__setattr__(self, "gate_bias_init", (lo, hi))

    @classmethod
    def for_model(cls, config: ModelConfig, every: Optional[int] = None, layers: Optional[list[int]] = None,
                  gla_heads: Optional[int] = None, d_state: Optional[int] = None, init: Optional[str] = None,
                  seed: int = 0, gate_bias_init: Optional[tuple[float, float]] = None) -> "ExpansionPlan":
        """The plan for ``config`` from what a user gave (the run config's ``expansion`` section or the
        tool's flags), with the defaults filled in: layers 0, 6, 12, ... (``choose_layers``), 1 GLA head,
        ``reinit``, and a Mamba2 d_state of 4x the largest chosen layer's."""
        chosen = choose_layers(config.num_layers, every=every, layers=layers)
        if config.arch == "gla":
            return cls(layers=chosen, gla_heads=gla_heads or 1, init=init or "reinit", seed=seed,
                       gate_bias_init=tuple(gate_bias_init) if gate_bias_init else None)
        return cls(layers=chosen, d_state=d_state or 4 * max(config.d_state[i] for i in chosen),
                   init=init or "reinit", seed=seed)


def _divisors_below(h: int) -> list[int]:
    return [d for d in range(1, h) if h % d == 0]


def validate(config: ModelConfig, plan: ExpansionPlan) -> None:
    """Raise ValueError when ``plan`` does not apply to ``config``; every message names the constraint."""
    arch = config.arch
    if plan.init not in INITS[arch]:
        raise ValueError(f"init={plan.init!r} is not a {arch} mode; {arch} supports {list(INITS[arch])}")
    choose_layers(config.num_layers, layers=plan.layers)
    if isinstance(config, GLAConfig):
        if plan.d_state is not None:
            raise ValueError("d_state applies to Mamba2 models; a GLA expansion sets gla_heads")
        if plan.gate_bias_init is not None and plan.init != "reinit":
            raise ValueError("gate_bias_init applies to init='reinit' only (merge keeps the gate bias)")
        for i in plan.layers:
            h = config.num_heads[i]
            if plan.gla_heads < 1 or plan.gla_heads >= h or h % plan.gla_heads:
                valid = _divisors_below(h)
                raise ValueError(
                    f"layer {i} has {h} heads: gla_heads={plan.gla_heads} must divide {h} and be smaller; "
                    + (f"valid values: {valid}" if valid else "this layer has one head and cannot merge further"))
    else:
        if plan.gate_bias_init is not None:
            raise ValueError("gate_bias_init applies to GLA models only")
        if plan.d_state is None:
            raise ValueError("a Mamba2 expansion needs d_state (the new N of the chosen layers)")
        for i in plan.layers:
            n = config.d_state[i]
            if plan.d_state <= n:
                raise ValueError(f"layer {i} has d_state {n}: the target d_state {plan.d_state} must be > {n}")


def expand_config(config: ModelConfig, plan: ExpansionPlan) -> ModelConfig:
    """The expanded model's config: new per-layer heads (GLA) or d_state (Mamba2); the chosen layers are
    added to ``expanded_layers``. The input config is not modified."""
    validate(config, plan)
    expanded = sorted(set(config.expanded_layers) | set(plan.layers))
    if isinstance(config, GLAConfig):
        heads = [plan.gla_heads if i in plan.layers else h for i, h in enumerate(config.num_heads)]
        return dataclasses.replace(config, num_heads=heads, expanded_layers=expanded)
    assert isinstance(config, Mamba2Config)
    d_state = [plan.d_state if i in plan.layers else n for i, n in enumerate(config.d_state)]
    return dataclasses.replace(config, d_state=d_state, expanded_layers=expanded)
