"""Pieces both models share: RMS norms, the SwiGLU MLP, the vocab-parallel embedding and LM head."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import tensor_parallel as mtp

from statex_dist.parallel import state
from statex_dist.parallel.layers import mark
from statex_dist.parallel.mappings import gather_replicated_output, tp_reduced_grad
from statex_dist.parallel.sequence import check_seq_len, gather_seq, mark_sequence_parallel, reduce_scatter_seq
from statex_dist.parallel.sharding import ShardSpec


def normal_init(std: float = 0.02):
    # megatron-core's layers require an init_method; the models build them with perform_initialization=False
    # (statex_dist.models.init draws every weight), so it never runs
    return lambda w: nn.init.normal_(w, mean=0.0, std=std)


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32, returned in x's dtype. x [..., D], weight [D]."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    """Replicated RMSNorm (a block's pre-norm or the final norm). x [..., D] -> [..., D].

    ``sequence_parallel``: x is this rank's time slice [B, T / TP, D], so the weight's gradient is summed
    over TP (inside autograd: ZeRO's hooks see the full gradient).
    """

    def __init__(self, hidden: int, eps: float, layer=None, dtype=torch.float32, sequence_parallel: bool = False):
        super().__init__()
        self.eps = eps
        self.sequence_parallel = sequence_parallel
        self.weight = mark(nn.Parameter(torch.ones(hidden, dtype=dtype)), ShardSpec((hidden,), layer=layer))
        if sequence_parallel:
            mark_sequence_parallel(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, tp_reduced_grad(self.weight) if self.sequence_parallel else self.weight, self.eps)


def column(in_f: int, out_f: int, cfg, layer, bias: bool = False, init=None, shared_input: bool = False):
    """megatron-core ColumnParallelLinear with its ShardSpec attached (out dim split).

    ``shared_input``: the caller feeds it an input that already passed copy-to-region, shared by the
    sibling projections, so their input gradients are summed over TP in one all-reduce, not one each.
    """
    lin = mtp.ColumnParallelLinear(in_f, out_f, config=cfg, init_method=init or normal_init(), bias=bias,
                                   gather_output=False, tp_group=state.tp_group(),
                                   disable_grad_reduce=shared_input)
    mark(lin.weight, ShardSpec((out_f, in_f), dim=0, layer=layer))
    if bias:
        mark(lin.bias, ShardSpec((out_f,), dim=0, layer=layer))
    return lin


class SequenceParallelRowLinear(mtp.RowParallelLinear):
    """megatron-core RowParallelLinear whose partial outputs are reduce-scattered along time (dim 1 of
    [B, T, D]) instead of all-reduced: x [B, T, in / TP] -> ([B, T / TP, out], None). megatron-core's own
    ``sequence_parallel`` scatters dim 0 of [S, B, H], the wrong axis here."""

    def forward(self, input_):
        y = self._forward_impl(input=input_, weight=self.weight, bias=None,
                               gradient_accumulation_fusion=self.gradient_accumulation_fusion,
                               allreduce_dgrad=False, sequence_parallel=False, tp_group=None, grad_output_buffer=None)
        return reduce_scatter_seq(y), None


def row(in_f: int, out_f: int, cfg, layer, init=None, sequence_parallel: bool = False):
    """megatron-core RowParallelLinear (input dim split, output all-reduced; reduce-scattered along time
    with ``sequence_parallel``) with its ShardSpec."""
    cls = SequenceParallelRowLinear if sequence_parallel else mtp.RowParallelLinear
    lin = cls(in_f, out_f, config=cfg, init_method=init or normal_init(), bias=False,
              input_is_parallel=True, skip_bias_add=False, tp_group=state.tp_group())
    mark(lin.weight, ShardSpec((out_f, in_f), dim=1, layer=layer))
    return lin


class SwiGLUMLP(nn.Module):
    """fla's GatedMLP: down(silu(gate(x)) * up(x)); gate/up column-parallel, down row-parallel.

    Shapes: x [B, T, hidden] -> [B, T, hidden]; with ``sequence_parallel`` [B, T / TP, hidden] in and out.
    """

    def __init__(self, hidden: int, intermediate: int, cfg, layer, sequence_parallel: bool = False):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.gate_proj = column(hidden, intermediate, cfg, layer, shared_input=True)
        self.up_proj = column(hidden, intermediate, cfg, layer, shared_input=True)
        self.down_proj = row(intermediate, hidden, cfg, layer, sequence_parallel=sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_column_input(x, self.sequence_parallel)
        return self.down_proj(F.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]


def copy_to_region(x: torch.Tensor) -> torch.Tensor:
    """Identity forward; the input gradient is summed over TP (megatron-core's copy-to-region)."""
    return mtp.copy_to_tensor_model_parallel_region(x, state.tp_group()) if state.tp_size() > 1 else x


def to_column_input(x: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """A sublayer's input on its way into column-parallel layers built with ``shared_input=True``:
    copy-to-region ([B, T, D], gradient all-reduced), or with sequence parallelism the all-gather of the
    time slices [B, T / TP, D] -> [B, T, D] (gradient reduce-scattered back)."""
    return gather_seq(x) if sequence_parallel else copy_to_region(x)


class SequenceParallelEmbedding(mtp.VocabParallelEmbedding):
    """VocabParallelEmbedding whose partial lookups are reduce-scattered along time: ids [B, T] ->
    [B, T / TP, hidden] (megatron-core's ``reduce_scatter_embeddings`` scatters dim 0 of [S, B, H])."""

    def forward(self, input_):
        check_seq_len(input_.shape[1], state.tp_size())
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_scatter_seq(out)


def embedding(padded_vocab: int, hidden: int, cfg, sequence_parallel: bool = False) -> mtp.VocabParallelEmbedding:
    """megatron-core VocabParallelEmbedding over the padded vocab. ids [B, T] -> [B, T, hidden]
    ([B, T / TP, hidden] with ``sequence_parallel``)."""
    cls = SequenceParallelEmbedding if sequence_parallel else mtp.VocabParallelEmbedding
    emb = cls(padded_vocab, hidden, init_method=normal_init(), config=cfg, tp_group=state.tp_group())
    mark(emb.weight, ShardSpec((padded_vocab, hidden), dim=0))
    return emb


class LMHead(nn.Module):
    """Vocab-parallel output layer; tied to the embedding when ``tied`` (then it owns no weight).

    ``forward(h)`` returns this rank's logits [B, T, V_pad / TP]. ``logits`` gathers them and drops the
    padded columns: [B, T, vocab]. ``loss`` is the token-mean cross entropy over the real vocab, computed
    with megatron-core's vocab_parallel_cross_entropy (no rank materialises the full logits).
    With ``sequence_parallel`` h is this rank's time slice [B, T / TP, D], all-gathered first (the
    gradient reduce-scattered back, in place of the column-parallel layer's all-reduce).
    """

    def __init__(self, hidden: int, vocab: int, padded_vocab: int, cfg, tied: bool, sequence_parallel: bool = False):
        super().__init__()
        self.vocab, self.padded_vocab, self.tied = vocab, padded_vocab, tied
        self.sequence_parallel = sequence_parallel
        # The weight lives here (named `lm_head.weight`), or in the embedding when tied; megatron-core's
        # layer is used for its TP semantics only.
        self.proj = mtp.ColumnParallelLinear(hidden, padded_vocab, config=cfg, init_method=normal_init(),
                                             bias=False, gather_output=False, skip_weight_param_allocation=True,
                                             tp_group=state.tp_group(), disable_grad_reduce=sequence_parallel)
        if not tied:
            local = padded_vocab // state.tp_size()
            self.weight = mark(nn.Parameter(torch.empty(local, hidden, dtype=cfg.params_dtype)),
                               ShardSpec((padded_vocab, hidden), dim=0))

    def forward(self, h: torch.Tensor, embedding_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = embedding_weight if self.tied else self.weight
        if self.sequence_parallel:
            h = gather_seq(h)
        return self.proj(h, weight=w)[0]

    def _vocab_range(self, local_width: int) -> tuple[int, int]:
        start = state.tp_rank() * local_width
        return start, start + local_width

    def logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        full = gather_replicated_output(local_logits)
        return full[..., : self.vocab]

    def loss(self, local_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        start, end = self._vocab_range(local_logits.shape[-1])
        if end > self.vocab:  # padded columns never win: they are not tokens
            pad = torch.arange(start, end, device=local_logits.device) >= self.vocab
            local_logits = local_logits.masked_fill(pad, torch.finfo(local_logits.dtype).min)
        mask = labels != ignore_index
        per_token = mtp.vocab_parallel_cross_entropy(local_logits.float(), labels.clamp_min(0))
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
