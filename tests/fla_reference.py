"""fla's own GLAForCausalLM and GatedDeltaNetForCausalLM, run on the CPU: their Triton kernels and fused norms
swapped for fla's own pure-PyTorch references (naive_recurrent_gla, naive_recurrent_gated_delta_rule,
naive_gdn_gate, rms_norm_ref) inside a context manager, in tests only."""
from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F
from fla.layers import gated_deltanet as fla_gdn_layer
from fla.layers import gla as fla_gla_layer
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.modules import mlp as fla_mlp
from fla.modules.norm.layernorm import rms_norm_ref
from fla.ops.gated_delta_rule.gate import naive_gdn_gate
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla.ops.gla.naive import naive_recurrent_gla


def _gla_kernel(q, k, v, g=None, gk=None, initial_state=None, output_final_state=False, **kw):
    gate = gk if gk is not None else g
    return naive_recurrent_gla(q, k, v, gate, initial_state, output_final_state)


def _gdn_kernel(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                use_gate_in_kernel=False, A_log=None, dt_bias=None, state_v_first=False, **kw):
    """fla's chunk / fused_recurrent_gated_delta_rule with what its kernels fuse done first in PyTorch."""
    if use_qk_l2norm_in_kernel:  # fla's l2norm: x / sqrt(sum x^2 + 1e-6) in fp32
        q, k = (t / torch.sqrt(t.float().pow(2).sum(-1, keepdim=True) + 1e-6).to(t.dtype) for t in (q, k))
    if use_beta_sigmoid_in_kernel:
        beta = beta.float().sigmoid() * (2.0 if allow_neg_eigval else 1.0)
    if use_gate_in_kernel:
        g = naive_gdn_gate(g, A_log, dt_bias)
    if v.shape[2] > q.shape[2]:  # grouped value attention: the kernels map value head i to key head i // g
        q, k = (t.repeat_interleave(v.shape[2] // q.shape[2], dim=2) for t in (q, k))
    o, state = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale, initial_state, output_final_state)
    if state is not None and state_v_first:
        state = state.transpose(-1, -2)
    return o.to(v.dtype), state


def _rmsnorm_forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
    return rms_norm_ref(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm, upcast=True)


def _gated_forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
    y = rms_norm_ref(x, self.weight, None, eps=self.eps, upcast=True)
    return (y * F.silu(g.float())).to(x.dtype)


def _conv_forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, **kw):
    T = x.shape[1]
    y = F.conv1d(x.transpose(1, 2), self.weight, self.bias, padding=self.kernel_size[0] - 1,
                 groups=self.hidden_size)[..., :T].transpose(1, 2)
    if self.activation is not None:
        y = F.silu(y)
    return y, None


@contextlib.contextmanager
def fla_on_cpu():
    with contextlib.ExitStack() as stack:
        for target, attr, new in (
            (fla_gla_layer, "chunk_gla", _gla_kernel),
            (fla_gla_layer, "fused_recurrent_gla", _gla_kernel),
            (fla_gla_layer, "fused_chunk_gla", _gla_kernel),
            (fla_gdn_layer, "chunk_gated_delta_rule", _gdn_kernel),
            (fla_gdn_layer, "fused_recurrent_gated_delta_rule", _gdn_kernel),
            # its q/k/v convolutions fused in one Triton call; ShortConvolution (below) runs each instead
            (fla_gdn_layer.GatedDeltaNet, "_use_fused_qkv_conv", lambda self, **kw: False),
            (RMSNorm, "forward", _rmsnorm_forward),
            (FusedRMSNormGated, "forward", _gated_forward),
            (ShortConvolution, "forward", _conv_forward),
            (fla_mlp, "swiglu", lambda a, b: F.silu(a) * b),
        ):
            stack.enter_context(mock.patch.object(target, attr, new))
        yield


def make_fla_gla(folder, seed=0, **overrides):
    """Create a random fla GLAForCausalLM with its own classes, save it with save_pretrained, return it."""
    from fla.models import GLAConfig, GLAForCausalLM
    torch.manual_seed(seed)
    kw = dict(hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=101, fuse_swiglu=False,
              fuse_cross_entropy=False)
    kw.update(overrides)
    model = GLAForCausalLM(GLAConfig(**kw)).float()
    with torch.no_grad():  # fla initialises some tensors to constants; random values test more
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    if not model.config.fuse_norm:
        for layer in model.model.layers:
            layer.attn.gate_fn = F.silu  # fla's ACT2FN['swish'] is a Triton kernel
    model.save_pretrained(folder)
    return model.eval()


def make_fla_gdn(folder, seed=0, **overrides):
    """Create a random fla GatedDeltaNetForCausalLM with its own classes, save it with save_pretrained, return
    it. Defaults: hidden 64, 2 layers of 2 heads of 16 (expand_v 1), vocabulary 101."""
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    torch.manual_seed(seed)
    kw = dict(hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=16, expand_v=1.0, vocab_size=101,
              fuse_swiglu=False, fuse_cross_entropy=False)
    kw.update(overrides)
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**kw)).float()
    with torch.no_grad():  # fla initialises the norms to 1; random values test more
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def fla_logits(model, ids):
    with fla_on_cpu(), torch.no_grad():
        return model(ids).logits
