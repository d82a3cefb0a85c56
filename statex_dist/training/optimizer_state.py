"""The optimizer's state in a layout-free form: fp32 master weights and both AdamW moments of every parameter,
stored as sharded checkpoints (``statex_dist.checkpoint.sharded``, the model weights' own format) beside the
model in every training checkpoint:

    <step>/optimizer/fp32/        manifest.json + weights/tpRR-ppSS.safetensors   fp32 master weights
    <step>/optimizer/exp_avg/     ...                                             AdamW first moments
    <step>/optimizer/exp_avg_sq/  ...                                             AdamW second moments

``optimizer/fp32`` only where the weights are not fp32 (bf16 runs): fp32 weights are their own master (in
memory too: ds_setup.share_fp32_master), so ``model/`` holds it and a resume reads it from there.

Each tensor has its parameter's shape and ShardSpec, so a resume at any TP x PP x DP x ZeRO stage reads its
slices exactly as it reads the weights (vocabulary padding, packed in_proj blocks, value-sharded GLA layers
and tied embeddings included) and the tools reshard it like any sharded checkpoint. AdamW's step count is
one number per run, kept in ``statex.json``.

Why not DeepSpeed's universal checkpoint or megatron-core's dist_checkpointing. ``ds_to_universal`` merges
TP slices by name patterns (Megatron-DeepSpeed's ``universal_checkpoint_info``: a concatenation dim, equal
or listed sub-parameters, one vocabulary padding rule); these layouts (per-layer shapes, value-sharded
1-head GLA layers, Mamba2's [z|x|B|C|dt] with ngroups < TP) would need a second table of split rules beside
the ShardSpecs. dist_checkpointing would need Megatron's own optimizer wrapper in place of DeepSpeed's
ZeRO. Both halves of what the universal format does are used here instead: DeepSpeed's tensor-fragment API
(``safe_get_full_*`` / ``safe_set_full_*``, what its universal loader writes through) gathers and scatters a
parameter's state over the ZeRO partitions of the DP group at any stage, and the ShardSpecs do the TP split.
"""
from __future__ import annotations

from pathlib import Path

import torch

from statex_dist.checkpoint.atomic import MANIFEST
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.sharded import ShardedCheckpoint
from statex_dist.models import specs_for
from statex_dist.models.names import Named

FOLDER = "optimizer"
MASTER = "fp32"
MOMENTS = ("exp_avg", "exp_avg_sq")
KEYS = (MASTER, *MOMENTS)


def base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch AdamW that steps: inside DeepSpeed's ZeRO / bf16 wrapper, or the engine's own at ZeRO-0."""
    opt = engine.optimizer
    return opt.optimizer if hasattr(opt, "optimizer") and isinstance(opt.optimizer, torch.optim.Optimizer) else opt


def partitioned(p) -> bool:
    """Whether DeepSpeed keeps this parameter's fp32 state in ZeRO / bf16 partitions (else AdamW's own). A
    rank holding none of it has ``_hp_mapping = None`` and still joins the DP gathers."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def ensure_state(engine) -> None:
    """Give AdamW its state before the first step (zero moments, step 0: what its first step would make),
    so a resume can write into it; linked into DeepSpeed's per-parameter fragments at ZeRO-1/2 and bf16."""
    base = base_optimizer(engine)
    for group in base.param_groups:
        for p in group["params"]:
            if not base.state[p]:
                base.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
    # DeepSpeed links each parameter's fragment to AdamW's state once, after the first step of the first
    # group (ZeRO-1/2: before the other groups have state, which leaves theirs unlinked); link all again.
    # ZeRO-3 reads AdamW's state directly.
    zero = engine.optimizer
    if hasattr(zero, "_hp_optimizer_states_linked"):
        zero._hp_optimizer_states_linked = False
        zero._lazy_init_hp_params_optimizer_state()


def adam_step(engine) -> int:
    """AdamW's step count (the same for every group and partition)."""
    for st in base_optimizer(engine).state.values():
        if "step" in st:
            return int(st["step"])
    return 0


def set_adam_step(engine, step: int) -> None:
    for st in base_optimizer(engine).state.values():
        st["step"] = torch.tensor(float(step))


def full_state(engine, p) -> dict[str, torch.Tensor]:
    """fp32 master and moments of ``p``: this rank's TP slice, whole over the DP group.

    At ZeRO >= 1 or bf16 a collective over the DP group: every DP rank calls it, parameter by parameter in
    the same order."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    if partitioned(p):
        out = {MASTER: safe_get_full_fp32_param(p)}
        out.update({k: safe_get_full_optimizer_state(p, k) for k in MOMENTS})
        return {k: v.detach().float().cpu() for k, v in out.items()}
    st = base_optimizer(engine).state[p]
    return {MASTER: p.detach().float().cpu(), **{k: st[k].detach().float().cpu() for k in MOMENTS}}


def set_full_state(engine, p, values: dict[str, torch.Tensor]) -> None:
    """Write this rank's TP slice of ``p``'s master and moments into DeepSpeed's partitions (no collective)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    if partitioned(p):
        safe_set_full_fp32_param(p, values[MASTER].to(p.device))
        for k in MOMENTS:
            safe_set_full_optimizer_state(p, values[k].to(p.device), k)
        return
    st = base_optimizer(engine).state[p]
    with torch.no_grad():
        p.copy_(values[MASTER])
        for k in MOMENTS:
            st[k].copy_(values[k])


def keys_to_save(weights_dtype: torch.dtype) -> tuple[str, ...]:
    """What a checkpoint of weights in ``weights_dtype`` stores under ``optimizer/``."""
    return MOMENTS if weights_dtype == torch.float32 else KEYS


def saved(ckpt: Path) -> bool:
    return all((Path(ckpt) / FOLDER / k / MANIFEST).exists() for k in MOMENTS)


def own_master(ckpt: Path) -> bool:
    """Whether ``ckpt`` stores an fp32 master of its own (else its fp32 weights are the master)."""
    return (Path(ckpt) / FOLDER / MASTER / MANIFEST).exists()


def stored(ckpt: Path) -> dict[str, ShardedCheckpoint]:
    """The saved state by key: the master from ``optimizer/fp32``, or from ``model/`` where the weights were
    saved in fp32 (then they are the master); a master in any other precision is refused."""
    ckpt = Path(ckpt)
    out = {k: ShardedCheckpoint(ckpt / FOLDER / k) for k in MOMENTS}
    if own_master(ckpt):
        out[MASTER] = ShardedCheckpoint(ckpt / FOLDER / MASTER)
        return out
    model = ShardedCheckpoint(ckpt / "model")
    low = [n for n in model.names() if model.dtype(n) != torch.float32]
    if low:
        raise CheckpointError(f"{ckpt / FOLDER / MASTER}: missing, and {ckpt / 'model'} holds {low[0]} in "
                              f"{model.dtype(low[0])}, not the fp32 master it would stand for; resume from a "
                              f"checkpoint written with its optimizer/{MASTER} folder")
    out[MASTER] = model
    return out


def restore(engine, named: list, ckpt: Path, tp_rank: int, tp: int, step: int) -> None:
    """Load the layout-free state saved in ``ckpt`` into this rank's parameters ``named`` ((name, param),
    this stage's, under the models' own names) at TP size ``tp``."""
    ensure_state(engine)
    state = stored(ckpt)
    specs = specs_for(state[MASTER].config, tp)   # once: every key's tensors have the parameters' specs
    # parameter by parameter: a resume holds one parameter's master and moments beyond the steady state
    for n, p in named:
        values = {k: torch.empty(_local_shape(p), dtype=torch.float32) for k in KEYS}
        for k in KEYS:
            state[k].load_into(Named([(n, values[k])]), tp_rank, tp, specs)
        set_full_state(engine, p, values)
    set_adam_step(engine, step)


def _local_shape(p) -> tuple[int, ...]:
    """A parameter's TP-local shape (ZeRO-3 keeps it in ``ds_shape``; the tensor itself is a stub)."""
    return tuple(getattr(p, "ds_shape", p.shape))
