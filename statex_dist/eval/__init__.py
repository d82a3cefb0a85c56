"""Evaluations of a model mapping input_ids [B, T] to logits [B, T, V]: MQAR, passkey, needle in a haystack,
held-out perplexity; reports (table, JSON, plots) and a CLI (``python -m statex_dist.eval``).

Training loop: ``results = evaluate(model, EvalConfig(...))`` on every rank, then
``log_to_tensorboard(writer, results, step)`` on rank 0.
"""
from statex_dist.eval.config import TASKS, EvalConfig

# the evaluations import torch when first used: EvalConfig and the CLI's --help do not need it
_LAZY = {"evaluate": "suite", "flatten": "suite", "log_to_tensorboard": "suite", "evaluate_mqar": "mqar",
         "mqar_batch": "mqar", "mqar_eval_set": "mqar", "trained_vocab_offset": "mqar", "evaluate_niah": "niah",
         "evaluate_passkey": "passkey", "evaluate_ppl": "perplexity"}

__all__ = ["TASKS", "EvalConfig", *sorted(_LAZY)]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"statex_dist.eval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'statex_dist.eval' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
