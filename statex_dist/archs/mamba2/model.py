"""Mamba2 LM: mamba_ssm's MambaLMHeadModel with Mamba2 mixers (no MLP), d_state chosen per layer.

Parameter names equal mamba_ssm's without the ``backbone.`` prefix (``layers.3.mixer.in_proj.weight``).
Shapes: B batch, T time, D hidden, E = expand * D (d_inner), Hh = E / headdim heads, P headdim,
G ngroups, N d_state of the layer.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from statex_dist.archs.mamba2 import layout
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.archs.mamba2.layout import block_specs, mixer_specs
from statex_dist.models.causal_lm import CausalLM
from statex_dist.models.common import RMSNorm
from statex_dist.models.recurrent_state import MixerState
from statex_dist.ops import causal_conv1d, ssd_log_decay, ssd_scan
from statex_dist.parallel import context, state
from statex_dist.parallel.factory import linear
from statex_dist.parallel.layers import local_parameter
from statex_dist.parallel.mappings import all_reduce_sum, gather_last_dim
from statex_dist.parallel.sequence import gather_seq


class Mamba2Mixer(nn.Module):
    """mamba_ssm's ``Mamba2`` mixer, heads split over TP. x [B, T, D] -> [B, T, D].

    in_proj -> [z | xBC | dt]; causal depthwise conv + SiLU over xBC; SSD scan with A = -exp(A_log),
    dt = softplus(dt + dt_bias), skip D; gated RMSNorm norm(y * silu(z)) over groups of E / G; out_proj.
    With ``sequence_parallel`` x and the output are this rank's time slice [B, T / TP, D]: x is
    all-gathered in front of in_proj, out_proj's output reduce-scattered.

    Precision under bf16 training. DeepSpeed stores every parameter in bf16 (the fp32 master copy is the
    optimizer's), as Megatron's Float16Module and a bf16 mamba_ssm model do. What the forward computes each
    one in (``statex_dist.training.precision`` records it):

    | parameter | computed in | where |
    |---|---|---|
    | ``in_proj.weight``, ``out_proj.weight`` | bf16 | matmuls on bf16 activations |
    | ``conv1d.weight``, ``conv1d.bias`` | fp32 | the convolution sums taps and bias in fp32 |
    | ``dt_bias`` | fp32 | dt + dt_bias, softplus and clamp in fp32 |
    | ``A_log`` | fp32 | A = -exp(A_log.float()) |
    | ``D`` | fp32 | the skip term y + D x in fp32 |
    | ``norm.weight`` | fp32 | the gated RMSNorm in fp32, its output rounded to bf16 |

    These are mamba_ssm's upcasts (``A_log.float()`` in Mamba2.forward; its Triton kernels load dt_bias, D
    and the norm weight as fp32) and Megatron's MambaMixer's (``A_log.float()``, ``dt_bias.float()``).
    They are made here rather than left to the scan, so every scan path receives fp32 A, dt_bias and D.
    """

    def __init__(self, config: Mamba2Config, layer: int, mp_cfg, sequence_parallel: bool = False):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        tp = state.tp_size()
        G, N = config.ngroups, config.d_state[layer]
        self.config, self.layer = config, layer
        specs = mixer_specs(config, layer, tp)   # every shape and split below is the layout's
        dtype = mp_cfg.params_dtype
        self.bc_gathered = G % tp != 0  # B/C channels split over TP, then all-gathered (see mixer_specs)
        # With B/C gathered, a rank's heads all lie in one group (tp % G == 0): the group this rank reads.
        self.group = state.tp_rank() // (tp // G) if self.bc_gathered else 0
        self.local_groups = 1 if self.bc_gathered else G // tp
        # this rank's widths of in_proj's blocks [z | x | B | C | dt]: E / TP, E / TP, GN / TP, GN / TP, heads / TP
        self.parts = specs["in_proj.weight"].local_parts(tp)
        self.E_l, _, self.GN_in, _, self.local_heads = self.parts
        self.N = N
        # with SP the gather in forward replaces in_proj's own copy-to-region
        self.in_proj = linear(specs["in_proj.weight"], mp_cfg, shared_input=sequence_parallel)
        self.conv1d = nn.Module()
        self.conv1d.weight = local_parameter(specs["conv1d.weight"], tp, dtype)
        self.conv1d.bias = local_parameter(specs["conv1d.bias"], tp, dtype, 0.0)
        self.dt_bias = local_parameter(specs["dt_bias"], tp, dtype)
        self.A_log = local_parameter(specs["A_log"], tp, dtype)
        self.D = local_parameter(specs["D"], tp, dtype, 1.0)
        self.norm = nn.Module()
        self.norm.weight = local_parameter(specs["norm.weight"], tp, dtype, 1.0)
        self.out_proj = linear(specs["out_proj.weight"], mp_cfg, sequence_parallel=sequence_parallel)

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """mamba_ssm's RMSNormGated(norm_before_gate=False, group_size=E/G): norm(y * silu(z)) per group.

        y, z [B, T, E_local]. When G < TP a group spans TP / G ranks: its sum of squares is all-reduced
        (mamba_ssm's own TP norm assumes whole groups per rank and is wrong there).
        """
        u = y.float() * torch.nn.functional.silu(z.float())
        if not self.bc_gathered:
            u = u.reshape(*u.shape[:-1], self.local_groups, -1)
            u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        else:
            G = self.config.ngroups
            ss = u.pow(2).sum(-1, keepdim=True)
            slots = torch.zeros(*ss.shape[:-1], G, dtype=ss.dtype, device=ss.device)
            slots = slots.index_copy(-1, torch.tensor([self.group], device=ss.device), ss)
            total = all_reduce_sum(slots)[..., self.group:self.group + 1]
            u = u * torch.rsqrt(total / (self.config.d_inner // G) + self.config.norm_eps)
        return (u.reshape(y.shape) * self.norm.weight.float()).to(y.dtype)

    def forward(self, x: torch.Tensor, initial_state: Optional[MixerState] = None,
                output_final_state: bool = False):
        """Returns y [B, T, D], and with ``output_final_state`` the MixerState after x (the SSD state
        [B, heads, headdim, d_state] fp32, the conv tail ``xBC`` [B, E + 2GN local, d_conv - 1]);
        ``initial_state``: the one before x (zeros when None)."""
        if self.sequence_parallel:
            x = gather_seq(x)
        B, T, _ = x.shape
        E, GN, h, g, N = self.E_l, self.GN_in, self.local_heads, self.local_groups, self.N
        z, xBC, dt = self.in_proj(x).split([E, E + 2 * GN, h], dim=-1)
        ssm0, conv0 = (None, None) if initial_state is None else (initial_state.recurrent,
                                                                  initial_state.conv.get("xBC"))
        cp = context.size() > 1
        if cp:
            context.check_no_state(initial_state, output_final_state)
            conv0 = context.previous_tails({"xBC": xBC}, self.config.d_conv)["xBC"]
        xBC = causal_conv1d(xBC, self.conv1d.weight[:, 0, :], self.conv1d.bias, activation="silu",
                            initial_state=conv0, return_final_state=output_final_state)
        xBC, conv_tail = xBC if output_final_state else (xBC, None)
        xs, Bm, Cm = xBC.split([E, GN, GN], dim=-1)
        if self.bc_gathered:
            Bm, Cm = (gather_last_dim(t).reshape(B, T, -1, N)[:, :, self.group] for t in (Bm, Cm))
        A, xs = -torch.exp(self.A_log.float()), xs.reshape(B, T, h, -1)

        def scan(h0, final):   # -> (y, the final state or None)
            out = ssd_scan(xs, dt, A, Bm.reshape(B, T, g, N), Cm.reshape(B, T, g, N), self.config.chunk_size,
                           D=self.D.float(), dt_bias=self.dt_bias.float(), dt_softplus=True,
                           dt_limit=self.config.dt_limit, initial_states=h0, return_final_states=final)
            return out if final else (out, None)
        if cp:   # the state entering this rank's segment from the CP ranks before (parallel/context.py)
            log_decay = lambda: ssd_log_decay(dt, A, self.dt_bias, True, self.config.dt_limit)[..., None, None]
            y, final_state = context.segment_scan(scan, log_decay, (B, h, xs.shape[-1], N), (B, h, 1, 1),
                                                  xs.device), None
        else:
            y, final_state = scan(ssm0, output_final_state)
        y = self._gated_norm(y.reshape(B, T, E), z)
        y = self.out_proj(y.to(x.dtype))[0]
        return (y, MixerState(final_state, {"xBC": conv_tail})) if output_final_state else y


class Mamba2Block(nn.Module):
    """Pre-norm residual block x + mixer(norm(x)). x [B, T, D] -> [B, T, D] ([B, T / TP, D] with
    ``sequence_parallel``).

    ``norm.weight`` is computed in fp32 (the RMSNorm runs in fp32). With ``residual_in_fp32`` the add is
    done in fp32 and its sum returned in x's dtype: under bf16 the stream between blocks is bf16, where
    mamba_ssm's fused blocks carry an fp32 residual from block to block.
    """

    def __init__(self, config: Mamba2Config, layer: int, mp_cfg, sequence_parallel: bool = False):
        super().__init__()
        self.layer = layer
        self.residual_in_fp32 = config.residual_in_fp32
        sp = sequence_parallel
        spec = block_specs(config, layer, state.tp_size())["norm.weight"]
        self.norm = RMSNorm(spec, config.norm_eps, mp_cfg.params_dtype, sequence_parallel=sp)
        self.mixer = Mamba2Mixer(config, layer, mp_cfg, sequence_parallel=sp)

    def forward(self, x: torch.Tensor, initial_state: Optional[MixerState] = None, output_final_state: bool = False):
        """With ``output_final_state`` returns (x, the mixer's final MixerState); ``initial_state``: the mixer's
        state after the tokens before x (see statex_dist.models.recurrent_state)."""
        out = self.mixer(self.norm(x), initial_state, output_final_state)
        out, final = out if output_final_state else (out, None)
        residual = x.float() if self.residual_in_fp32 else x
        x = (residual + out).to(x.dtype)
        return (x, final) if output_final_state else x


class Mamba2ForCausalLM(CausalLM):
    """mamba_ssm's MambaLMHeadModel: Mamba2 blocks between ``embedding`` and ``norm_f``, the LM head tied by
    default (see CausalLM)."""
    EMBEDDING, NORM, BLOCK = layout.EMBEDDING, layout.NORM, Mamba2Block
