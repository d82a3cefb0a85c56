"""megatron-core's tensor-parallel layers as the models build them, each with its ShardSpec attached: the
column / row linear layers, their sequence-parallel variants along time ([B, T, D] here, where megatron-core
splits dim 0 of [S, B, H]), and the vocab-parallel embedding and LM head."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import tensor_parallel as mtp
from megatron.core.tensor_parallel.utils import VocabUtility

from statex_dist.parallel import state
from statex_dist.parallel.layers import local_parameter, mark
from statex_dist.parallel.mappings import gather_replicated_output, tp_reduced_grad
from statex_dist.parallel.sequence import check_seq_len, gather_seq, reduce_scatter_seq
from statex_dist.parallel.sharding import ShardSpec


def _never_called(weight: torch.Tensor) -> None:
    # megatron-core's layers require an init_method; the models build them with perform_initialization=False
    # (statex_dist.models.init draws every weight), so it never runs
    raise AssertionError("megatron-core initialised a weight; state.megatron_config() turns that off")


def column(spec: ShardSpec, mp_cfg, *, bias_spec: Optional[ShardSpec] = None, shared_input: bool = False):
    """megatron-core ColumnParallelLinear of the layout's ``spec`` (weight [out, in], out split), which it
    carries. ``shared_input``: the caller feeds it an input that already passed copy-to-region, shared by
    the sibling projections, so their input gradients are summed over TP in one all-reduce, not one each.
    """
    out_f, in_f = spec.shape
    lin = mtp.ColumnParallelLinear(in_f, out_f, config=mp_cfg, init_method=_never_called,
                                   bias=bias_spec is not None, gather_output=False, tp_group=state.tp_group(),
                                   disable_grad_reduce=shared_input)
    mark(lin.weight, spec)
    if bias_spec is not None:
        mark(lin.bias, bias_spec)
    return lin


class SequenceParallelRowLinear(mtp.RowParallelLinear):
    """megatron-core RowParallelLinear whose partial outputs are reduce-scattered along time (dim 1 of
    [B, T, D]) instead of all-reduced: x [B, T, in / TP] -> ([B, T / TP, out], None). megatron-core's own
    ``sequence_parallel`` scatters dim 0 of [S, B, H], the wrong axis here. The local product is a plain
    matmul (the parent's fused-gradient path is for Megatron's own optimizer, not DeepSpeed's)."""

    def forward(self, input_):
        return reduce_scatter_seq(F.linear(input_, self.weight)), None


def row(spec: ShardSpec, mp_cfg, *, sequence_parallel: bool = False):
    """megatron-core RowParallelLinear of the layout's ``spec`` (weight [out, in], in split; output
    all-reduced, or reduce-scattered along time with ``sequence_parallel``), which it carries."""
    out_f, in_f = spec.shape
    cls = SequenceParallelRowLinear if sequence_parallel else mtp.RowParallelLinear
    lin = cls(in_f, out_f, config=mp_cfg, init_method=_never_called, bias=False,
              input_is_parallel=True, skip_bias_add=False, tp_group=state.tp_group())
    mark(lin.weight, spec)
    return lin


def to_column_input(x: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """A sublayer's input on its way into column-parallel layers built with ``shared_input=True``:
    copy-to-region ([B, T, D], gradient all-reduced), or with sequence parallelism the all-gather of the
    time slices [B, T / TP, D] -> [B, T, D] (gradient reduce-scattered back)."""
    return gather_seq(x) if sequence_parallel else tp_reduced_grad(x)


class SequenceParallelEmbedding(mtp.VocabParallelEmbedding):
    """VocabParallelEmbedding whose partial lookups are reduce-scattered along time: ids [B, T] ->
    [B, T / TP, hidden] (megatron-core's ``reduce_scatter_embeddings`` scatters dim 0 of [S, B, H])."""

    def forward(self, input_):
        check_seq_len(input_.shape[1], state.tp_size())
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_scatter_seq(out)


def embedding(spec: ShardSpec, mp_cfg, *, sequence_parallel: bool = False) -> mtp.VocabParallelEmbedding:
    """megatron-core VocabParallelEmbedding of the layout's ``spec`` ([padded vocab, hidden], rows split).
    ids [B, T] -> [B, T, hidden] ([B, T / TP, hidden] with ``sequence_parallel``)."""
    padded_vocab, hidden = spec.shape
    cls = SequenceParallelEmbedding if sequence_parallel else mtp.VocabParallelEmbedding
    emb = cls(padded_vocab, hidden, init_method=_never_called, config=mp_cfg, tp_group=state.tp_group())
    mark(emb.weight, spec)
    return emb


class LMHead(nn.Module):
    """Vocab-parallel output layer; tied to the embedding when ``tied`` (then it owns no weight).

    ``forward(h)`` returns this rank's logits [B, T, V_pad / TP]. ``logits`` gathers them and drops the
    padded columns: [B, T, vocab]. ``loss`` is the token-mean cross entropy over the real vocab, computed
    with megatron-core's vocab_parallel_cross_entropy (no rank materialises the full logits).
    With ``sequence_parallel`` h is this rank's time slice [B, T / TP, D], all-gathered first (the
    gradient reduce-scattered back, in place of the column-parallel layer's all-reduce).
    """

    def __init__(self, spec: ShardSpec, vocab: int, mp_cfg, tied: bool, sequence_parallel: bool = False):
        """``spec``: the layout's ``lm_head.weight`` [padded vocab, hidden], or the embedding's when tied."""
        super().__init__()
        padded_vocab, hidden = spec.shape
        self.vocab, self.padded_vocab, self.tied = vocab, padded_vocab, tied
        self.sequence_parallel = sequence_parallel
        # The weight lives here (named `lm_head.weight`), or in the embedding when tied; megatron-core's
        # layer is used for its TP semantics only.
        self.proj = mtp.ColumnParallelLinear(hidden, padded_vocab, config=mp_cfg, init_method=_never_called,
                                             bias=False, gather_output=False, skip_weight_param_allocation=True,
                                             tp_group=state.tp_group(), disable_grad_reduce=sequence_parallel)
        if not tied:
            self.weight = local_parameter(spec, state.tp_size(), mp_cfg.params_dtype)

    def forward(self, h: torch.Tensor, embedding_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = embedding_weight if self.tied else self.weight
        if self.sequence_parallel:
            h = gather_seq(h)
        return self.proj(h, weight=w)[0]

    def logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        full = gather_replicated_output(local_logits)
        return full[..., : self.vocab]

    def loss(self, local_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(
            local_logits.shape[-1], state.tp_rank(), state.tp_size())
        if end > self.vocab:  # padded columns never win: they are not tokens
            pad = torch.arange(start, end, device=local_logits.device) >= self.vocab
            local_logits = local_logits.masked_fill(pad, torch.finfo(local_logits.dtype).min)
        mask = labels != ignore_index
        per_token = mtp.vocab_parallel_cross_entropy(local_logits.float(), labels.clamp_min(0))
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
