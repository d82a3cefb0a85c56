"""All evaluations behind one call, for the training loop and the CLI: ``evaluate(model, EvalConfig(...))``,
then ``flatten`` / ``log_to_tensorboard`` for scalars."""
from __future__ import annotations

import time
from typing import Any, Optional

import torch

from statex_dist.eval.common import takes_state
from statex_dist.eval.config import TASKS, EvalConfig
from statex_dist.eval.mqar import evaluate_mqar
from statex_dist.eval.niah import evaluate_niah
from statex_dist.eval.passkey import evaluate_passkey
from statex_dist.eval.perplexity import evaluate_ppl

__all__ = ["TASKS", "EvalConfig", "check", "data_parallel", "evaluate", "flatten", "log_to_tensorboard"]


def data_parallel() -> tuple[int, int, Any]:
    """(dp_rank, dp_size, dp_group) of the running job's megatron-core groups; (0, 1, None) without them."""
    from megatron.core import parallel_state as ps
    if not ps.model_parallel_is_initialized():
        return 0, 1, None
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(), ps.get_data_parallel_group()


def _model_vocab(model) -> Optional[int]:
    model_config = getattr(model, "config", None)
    return getattr(model_config, "vocab_size", None) if model_config is not None else getattr(model, "vocab", None)


def check(model, eval_cfg: EvalConfig) -> None:
    """Fail before any work for a task that cannot run (unknown name, no data, ids outside the vocabulary)."""
    unknown = [t for t in eval_cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; choose from {', '.join(TASKS)}")
    if "ppl" in eval_cfg.tasks and not eval_cfg.data:
        raise ValueError("the ppl task needs held-out shards (EvalConfig.data / --data)")
    if eval_cfg.segment_len is not None:
        if eval_cfg.segment_len < 1 or not takes_state(model):
            raise ValueError(f"segment_len={eval_cfg.segment_len} needs a positive length and a model whose forward "
                             f"carries a recurrent state (state=, statex_dist's CausalLM)")
    vocab = _model_vocab(model)
    if vocab is not None:
        if "mqar" in eval_cfg.tasks and eval_cfg.vocab_offset + 256 > vocab:
            raise ValueError(f"mqar uses ids {eval_cfg.vocab_offset}..{eval_cfg.vocab_offset + 255} but the model has "
                             f"{vocab} tokens; set vocab_offset (--vocab-offset) or drop mqar")
        if eval_cfg.tokenizer in (None, "bytes") and 256 > vocab and {"passkey", "niah"} & set(eval_cfg.tasks):
            raise ValueError(f"passkey/niah with the byte tokenizer need ids 0..255; the model has {vocab} tokens")


def evaluate(model: torch.nn.Module, eval_cfg: Optional[EvalConfig] = None,
             dp: Optional[tuple[int, int, Any]] = None, **overrides) -> dict:
    """Run ``eval_cfg.tasks`` on ``model`` (any module mapping input_ids [B, T] to logits [B, T, V]).

    dp: (dp_rank, dp_size, dp_group) to split the work over data-parallel replicas (same numbers as one
    rank); default: the running job's groups. All TP ranks of a group must call this together.
    Returns {"mqar": {N: acc}, "passkey": grid, "niah": grid, "ppl": {...}, "seconds": {task: s}} for the
    tasks asked (grid: see :func:`statex_dist.eval.grid.evaluate_grid`).
    """
    eval_cfg = (eval_cfg or EvalConfig()).replace(**overrides)
    if isinstance(eval_cfg.tasks, str):  # "mqar,ppl" as a run config or command line writes it
        eval_cfg = eval_cfg.replace(tasks=[t.strip() for t in eval_cfg.tasks.split(",") if t.strip()])
    check(model, eval_cfg)
    dp_rank, dp_size, group = dp if dp is not None else data_parallel()
    par = dict(dp_rank=dp_rank, dp_size=dp_size, dp_group=group, segment_len=eval_cfg.segment_len)
    grid = dict(lengths=eval_cfg.lengths, depths=eval_cfg.depths, n=eval_cfg.grid_n, tokenizer=eval_cfg.tokenizer,
                batch=eval_cfg.batch, seed=eval_cfg.seed, **par)
    runs = {
        "mqar": lambda: evaluate_mqar(model, eval_cfg.mqar_pairs, eval_cfg.mqar_n, eval_cfg.batch, eval_cfg.seed,
                                      eval_cfg.vocab_offset, **par),
        "passkey": lambda: evaluate_passkey(model, digits=eval_cfg.passkey_digits, **grid),
        "niah": lambda: evaluate_niah(model, distractors=eval_cfg.niah_distractors, **grid),
        "ppl": lambda: evaluate_ppl(model, eval_cfg.data, eval_cfg.ppl_batches, eval_cfg.micro_batch, **par),
    }
    out, secs = {}, {}
    for task in eval_cfg.tasks:
        t0 = time.time()
        out[task] = runs[task]()
        secs[task] = round(time.time() - t0, 3)
    out["seconds"] = secs
    return out


def _mean(grid: list[list[float]]) -> float:
    vals = [v for row in grid for v in row]
    return sum(vals) / len(vals)


def flatten(results: dict, prefix: str = "eval") -> dict[str, float]:
    """Scalars named for tensorboard: mqar/N8 ..., mqar/mean; passkey/L256_d0.5 ..., passkey/mean,
    passkey/nll; the same for niah; ppl, loss."""
    out = {}
    if "mqar" in results:
        accs = {int(k): v for k, v in results["mqar"].items()}
        out.update({f"{prefix}/mqar/N{k}": v for k, v in sorted(accs.items())})
        out[f"{prefix}/mqar/mean"] = sum(accs.values()) / len(accs)
    for task in ("passkey", "niah"):
        if task in results:
            g = results[task]
            for i, L in enumerate(g["lengths"]):
                for j, d in enumerate(g["depths"]):
                    out[f"{prefix}/{task}/L{L}_d{d:g}"] = g["accuracy"][i][j]
            out[f"{prefix}/{task}/mean"] = _mean(g["accuracy"])
            out[f"{prefix}/{task}/nll"] = _mean(g["nll"])
    if "ppl" in results:
        out[f"{prefix}/ppl"] = results["ppl"]["ppl"]
        out[f"{prefix}/loss"] = results["ppl"]["loss"]
    return out


def log_to_tensorboard(writer, results: dict, step: int, prefix: str = "eval") -> dict[str, float]:
    """Write :func:`flatten`'s scalars to a ``SummaryWriter`` at ``step``; returns them."""
    scalars = flatten(results, prefix)
    for name, value in scalars.items():
        writer.add_scalar(name, value, step)
    return scalars
