"""Mamba2's model config: mamba_ssm's Mamba2 fields under this project's names, with d_state per layer."""
from __future__ import annotations

from dataclasses import dataclass, field

from statex_dist.models.config import ModelConfig


@dataclass
class Mamba2Config(ModelConfig):
    """mamba_ssm's Mamba2 stack (MambaLMHeadModel with Mamba2 mixers and no MLP), with d_state per layer."""
    d_state: list[int] = field(default_factory=list)
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = 256
    conv_bias: bool = True
    bias: bool = False
    residual_in_fp32: bool = True
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    arch = "mamba2"

    def __post_init__(self):
        if isinstance(self.d_state, int):
            self.d_state = [self.d_state] * self.num_layers
        self._check_layers("d_state", self.d_state)
        self.dt_limit = tuple(float(x) for x in self.dt_limit)
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} (expand x hidden) must be a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"{self.nheads} heads must be a multiple of ngroups {self.ngroups}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    def state_size(self, layer: int) -> int:
        """Recurrent state floats of one layer for one sequence: d_inner x d_state."""
        return self.d_inner * self.d_state[layer]
