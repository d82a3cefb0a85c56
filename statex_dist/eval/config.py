"""What an evaluation runs: :class:`EvalConfig`, whose field defaults are the evaluation defaults of every entry
point (``evaluate``, the ``eval`` section of the training YAML, the flags of ``python -m statex_dist.eval``).

No torch at import: the run config (statex_dist/run_config.py) and the CLI's ``--help`` read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

TASKS = ("mqar", "passkey", "niah", "ppl")


@dataclass
class EvalConfig:
    tasks: Sequence[str] = ("mqar", "passkey", "niah")  # ppl also needs held-out shards (``data``)
    seed: int = 0                   # selects the fixed evaluation sets
    batch: int = 16                 # sequences per forward pass (mqar, passkey, niah)
    # every task: run sequences longer than this in segments of this many tokens, carrying the recurrent and
    # conv states between them (memory that does not grow with the length; the logits of the whole pass);
    # None: one forward pass per sequence
    segment_len: Optional[int] = None
    # mqar
    mqar_pairs: Sequence[int] = (8, 16, 32, 64)
    mqar_n: int = 256               # sequences per N
    # where the MQAR 0-255 block starts in the model's vocabulary; the entry points that know the checkpoint
    # default to the offset it was trained with (statex_dist.eval.mqar.trained_vocab_offset)
    vocab_offset: int = 0
    # passkey, niah
    lengths: Sequence[int] = (256, 512, 1024, 2048)
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    grid_n: int = 10                # examples per (length, depth) cell
    tokenizer: Any = "bytes"
    passkey_digits: int = 5
    niah_distractors: int = 3
    # ppl
    data: Optional[str] = None      # held-out shard folder
    ppl_batches: int = 8
    micro_batch: int = 4

    def replace(self, **kw) -> "EvalConfig":
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_run(cls, run_cfg, tasks: Optional[Sequence[str]] = None) -> "EvalConfig":
        """The evaluations a training run asks for: its ``eval`` section, with the held-out shards and
        micro-batch of its ``data`` section (the one place the run config's keys map onto these fields).
        ``eval.vocab_offset: null`` is the offset ``model.source`` was trained with (0 for ``scratch``)."""
        e, d = run_cfg.eval, run_cfg.data
        offset = e.vocab_offset
        if offset is None:
            source = run_cfg.model.source
            offset = cls.vocab_offset
            if source and source != "scratch":
                from statex_dist.eval.mqar import trained_vocab_offset
                offset = trained_vocab_offset(source)
        return cls(tasks=tuple(e.tasks if tasks is None else tasks), data=d.valid or None, ppl_batches=e.batches,
                   micro_batch=d.micro_batch, mqar_pairs=tuple(e.mqar_pairs), mqar_n=e.mqar_n,
                   vocab_offset=offset, lengths=tuple(e.lengths), depths=tuple(e.depths),
                   grid_n=e.grid_n, segment_len=e.segment_len)
