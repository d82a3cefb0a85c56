"""Any architecture's model (GLA, Mamba2) as a DeepSpeed ``PipelineModule``: the model as a flat list of stage
pieces.

    [embedding, block 0, ..., block L-1, final norm, LM head]

Each piece is a LayerSpec (built only on the stage that owns it) holding the same megatron-core TP layers
as the one-module model, so TP and PP compose. A tied LM head is a second use of the embedding piece
(TiedLayerSpec): DeepSpeed keeps a copy on the first and the last stage and all-reduces its gradient
between them. Stages are balanced by parameter count, so StateX-expanded layers weigh what they weigh.

Parameters keep the model's own names through :func:`internal_names` (``5.attn.q_proj.weight`` on a
stage is ``layers.4.attn.q_proj.weight``), so the ShardSpecs of ``statex_dist.models.specs_for`` and
the full-tensor helpers apply per stage: :func:`load_full` copies this rank's TP slice of the stage's
parameters, :func:`gather_full` collects the full model over TP and over the pipeline stages.

Data: the engine's iterator yields ``(input_ids [b, T], labels [b, T])`` per micro-batch of size b; the
first stage reads the ids, the last the labels. Activations between stages are hidden [b, T, D].
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from megatron.core import parallel_state as ps
from megatron.core.model_parallel_config import ModelParallelConfig

from statex_dist import archs
from statex_dist.models import specs_for
from statex_dist.models.common import RMSNorm
from statex_dist.models.names import by_internal_name
from statex_dist.models.validate import check_parallel_sizes
from statex_dist.parallel import state, weights
from statex_dist.parallel.deepspeed_mpu import check_grid_agrees, ensure_deepspeed_comm, pipeline_topology
from statex_dist.parallel.megatron_layers import LMHead, embedding
from statex_dist.parallel.sharding import ShardSpec

TIED_KEY = "embed"


def _megatron_config(dtype: torch.dtype) -> ModelParallelConfig:
    return state.megatron_config(dtype)


def _spec(config, name: str) -> ShardSpec:
    """The layout's spec of a stage piece's parameter at this TP size."""
    return specs_for(config, state.tp_size())[name]


def validate_parallel(config, world_size: int, tp: int, pp: int) -> int:
    """Check the sizes against the model and the world before any process group exists; return DP.

    Raises ValueError naming the constraint and the sizes that work (statex_dist.models.validate): PP
    larger than the number of layers (a stage without a block), a world that is not TP x PP x DP, a
    tensor that does not split over TP.
    """
    check_parallel_sizes(config, tp, pp, world_size)
    return world_size // (tp * pp)


class EmbeddingPiece(nn.Module):
    """Vocab-parallel embedding: input_ids [b, T] -> hidden [b, T, D].

    Its parameter is named as in the model (``embeddings.weight`` / ``embedding.weight``). When the
    embeddings are tied, the last stage's copy is also the LM head (:func:`tied_head_forward`).
    """

    def __init__(self, config, dtype: torch.dtype):
        super().__init__()
        mp_cfg = _megatron_config(dtype)
        self.attr = archs.of(config).embedding
        spec = _spec(config, f"{self.attr}.weight")
        setattr(self, self.attr, embedding(spec, mp_cfg))
        if config.tie_word_embeddings:
            self.head = LMHead(spec, config.vocab_size, mp_cfg, tied=True)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self, self.attr).weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(input_ids)


def tied_head_forward(piece: EmbeddingPiece, h: torch.Tensor) -> torch.Tensor:
    """The tied LM head on the last stage: h [b, T, D] -> local logits [b, T, V_pad / TP]."""
    return piece.head(h, piece.weight)


class FinalNorm(nn.Module):
    """The final RMSNorm, named as in the model (``norm`` / ``norm_f``). h [b, T, D] -> [b, T, D]."""

    def __init__(self, config, dtype: torch.dtype):
        super().__init__()
        self.attr = archs.of(config).final_norm
        setattr(self, self.attr, RMSNorm(_spec(config, f"{self.attr}.weight"), config.norm_eps, dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(h)


class HeadPiece(nn.Module):
    """Untied vocab-parallel LM head (``lm_head.weight``): h [b, T, D] -> local logits [b, T, V_pad / TP]."""

    def __init__(self, config, dtype: torch.dtype):
        super().__init__()
        self.lm_head = LMHead(_spec(config, "lm_head.weight"), config.vocab_size, _megatron_config(dtype), tied=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)


class VocabParallelLoss:
    """The engine's ``loss_fn(local_logits [b, T, V_pad / TP], labels [b, T])``: LMHead.loss, i.e. the
    token-mean vocab-parallel cross entropy with the padded vocab columns masked.

    A plain object, not a module, so the PipelineModule does not register it as a submodule.
    """

    def __init__(self, config):
        emb = _spec(config, f"{archs.of(config).embedding}.weight")
        self.head = LMHead(emb, config.vocab_size, _megatron_config(torch.float32),
                           tied=True)  # owns no weight: only the vocab range and the masking

    def __call__(self, local_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(local_logits, labels)


def layer_specs(config, dtype: torch.dtype = torch.float32) -> list:
    """The stage pieces as LayerSpecs: embedding, one per block, final norm, LM head (tied or not)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec
    arch = archs.of(config)
    emb_attr, block_cls = arch.embedding, arch.model_class.BLOCK
    mp_cfg = _megatron_config(dtype)
    tied = config.tie_word_embeddings
    specs = [TiedLayerSpec(TIED_KEY, EmbeddingPiece, config, dtype, tied_weight_attr=[f"{emb_attr}.weight"])
             if tied else LayerSpec(EmbeddingPiece, config, dtype)]
    specs += [LayerSpec(block_cls, config, i, mp_cfg) for i in range(config.num_layers)]
    specs.append(LayerSpec(FinalNorm, config, dtype))
    specs.append(TiedLayerSpec(TIED_KEY, EmbeddingPiece, config, dtype, forward_fn=tied_head_forward,
                               tied_weight_attr=[f"{emb_attr}.weight"])
                 if tied else LayerSpec(HeadPiece, config, dtype))
    return specs


def pipeline_module(config, dtype: torch.dtype = torch.float32, tp: int = 1, pp: int = 1,
                    activation_checkpoint_interval: int = 0):
    """The model as a ``deepspeed.pipe.PipelineModule`` over PP stages of TP ranks (DP = the rest).

    Call after ``statex_dist.parallel.state.initialize(tp, pp)``. The weights are left empty: fill them with
    :func:`load_full` (from a checkpoint, or ``statex_dist.models.init.fresh_weights``). Checks the sizes
    (:func:`validate_parallel`) and that DeepSpeed's grid equals megatron-core's groups on every rank.

    Pass it to ``deepspeed.initialize(model=..., optimizer=..., config=...)`` without ``mpu``: with a
    pipeline DeepSpeed refuses one and uses the module's grid, and its engine must keep doing so, as it
    mixes ``engine.mpu`` and ``engine.grid`` groups in one collective (the loss broadcast of
    ``train_batch``), which deadlocks if they are different group objects. ZeRO-1 (the only stage that
    is right with a pipeline) then shards over the grid's DP group: megatron-core's DP ranks.
    """
    world = dist.get_world_size()
    dp = validate_parallel(config, world, tp, pp)
    if (state.tp_size(), ps.get_pipeline_model_parallel_world_size()) != (tp, pp):
        raise RuntimeError(
            f"parallel_state has TP={state.tp_size()} PP={ps.get_pipeline_model_parallel_world_size()}, "
            f"the pipeline asks for TP={tp} PP={pp}: call state.initialize({tp}, {pp}) first")
    if "LOCAL_RANK" not in os.environ:
        if world > 1:
            raise RuntimeError("LOCAL_RANK is not set: start the job with torchrun or the deepspeed launcher")
        os.environ["LOCAL_RANK"] = "0"  # a world of one (debug mode): DeepSpeed reads it
    ensure_deepspeed_comm()
    from deepspeed.pipe import PipelineModule
    module = PipelineModule(
        layers=layer_specs(config, dtype), topology=pipeline_topology(tp, pp, dp),
        loss_fn=VocabParallelLoss(config), partition_method="parameters",
        activation_checkpoint_interval=activation_checkpoint_interval,
        # blocks only: a reentrant checkpoint around the embedding (int ids, no grad) gives an output
        # without grad_fn, and the first stage's backward fails
        checkpointable_layers=[archs.of(config).model_class.BLOCK.__name__])
    check_grid_agrees(module._grid)
    module.model_config = config
    return module


def internal_names(module) -> dict[str, str]:
    """PipelineModule parameter name -> the model's own name, for this stage's parameters.

    ``tied_modules.embed.embeddings.weight`` -> ``embeddings.weight`` (on both tied stages);
    ``{k}.X`` -> ``layers.{k-1}.X`` for a block piece (k in 1..L), else ``X`` (``norm.weight``,
    ``lm_head.weight``, ``embedding.weight``, ...).
    """
    L = module.model_config.num_layers
    out = {}
    for name, _ in module.named_parameters():
        head, _, rest = name.partition(".")
        if head == "tied_modules":
            out[name] = rest.partition(".")[2]
        else:
            k = int(head)
            out[name] = f"layers.{k - 1}.{rest}" if 1 <= k <= L else rest
    return out


def load_full(module, full: Mapping[str, torch.Tensor], specs: Mapping[str, ShardSpec]) -> None:
    """Copy this rank's TP slice of its stage's parameters from full tensors (the model's own names).

    Both copies of a tied embedding load the same tensor.
    """
    weights.load_full(by_internal_name(module), full, specs)


def stage_full(module, specs: Mapping[str, ShardSpec],
               pick: Callable[[nn.Parameter], torch.Tensor] = lambda p: p.detach()) -> dict[str, torch.Tensor]:
    """This stage's parameters (or ``pick(p)``, e.g. the grad) at full shape, gathered over TP."""
    return weights.gather_full(by_internal_name(module), specs, pick)


def gather_full(module, specs: Mapping[str, ShardSpec],
                pick: Callable[[nn.Parameter], torch.Tensor] = lambda p: p.detach()) -> dict[str, torch.Tensor]:
    """The whole model at full shape on every rank: gathered over TP, then over the pipeline stages.

    A tied embedding present on two stages is taken from the first. Collective over the TP and PP
    groups; tensors come back on the CPU.
    """
    mine = {k: v.cpu() for k, v in stage_full(module, specs, pick).items()}
    stages: list[Optional[dict]] = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(stages, mine, group=ps.get_pipeline_model_parallel_group())
    out: dict[str, torch.Tensor] = {}
    for s in stages:
        for k, v in s.items():
            out.setdefault(k, v)
    return out
