"""Evaluations of a model mapping input_ids [B, T] to logits [B, T, V]: MQAR, passkey, needle in a haystack,
held-out perplexity; reports (table, JSON, plots) and a CLI (``python -m statex_dist.eval``).

Training loop: ``results = evaluate(model, EvalConfig(...))`` on every rank, then
``log_to_tensorboard(writer, results, step)`` on rank 0.
"""
from statex_dist.eval.mqar import evaluate_mqar, mqar_batch, mqar_eval_set
from statex_dist.eval.niah import evaluate_niah
from statex_dist.eval.passkey import evaluate_passkey
from statex_dist.eval.perplexity import evaluate_ppl
from statex_dist.eval.suite import TASKS, EvalConfig, evaluate, flatten, log_to_tensorboard

__all__ = ["TASKS", "EvalConfig", "evaluate", "evaluate_mqar", "evaluate_niah", "evaluate_passkey", "evaluate_ppl",
           "flatten", "log_to_tensorboard", "mqar_batch", "mqar_eval_set"]
