"""fla's own GLAForCausalLM, run on the CPU: its Triton kernels and fused norms swapped for fla's own
pure-PyTorch references (naive_recurrent_gla, rms_norm_ref) inside a context manager, in tests only."""
from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F
from fla.layers import gla as fla_gla_layer
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.modules import mlp as fla_mlp
from fla.modules.norm.layernorm import rms_norm_ref
from fla.ops.gla.naive import naive_recurrent_gla


def _gla_kernel(q, k, v, g=None, gk=None, initial_state=None, output_final_state=False, **kw):
    gate = gk if gk is not None else g
    return naive_recurrent_gla(q, k, v, gate, initial_state, output_final_state)


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


def fla_logits(model, ids):
    with fla_on_cpu(), torch.no_grad():
        return model(ids).logits
