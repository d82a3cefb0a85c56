"""Task shards: generated MQAR sequences (loss on the answers only) mixed with synthetic text, in the shard
format of ``format.py`` with a loss mask, so a post-training run through ``statex_dist.train`` trains on
recall exactly as the embedded tiny models were pretrained (``statex_dist.tiny``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from statex_dist.checkpoint.atomic import atomic_dir
from statex_dist.data import format as fmt
from statex_dist.data.errors import DataError
from statex_dist.data.mqar import IGNORE, mqar_batch
from statex_dist.data.synthetic import documents
from statex_dist.data.tokenizer import ByteTokenizer
from statex_dist.data.writer import shard_table, shard_writer, tokenizer_entry


class TextWindows:
    """Random windows of ``T + 1`` byte tokens from a fixed synthetic corpus (documents joined with EOS);
    every ``seed`` draws other documents from the same lexicon."""

    def __init__(self, seed: int, n_docs: int = 400):
        tok = ByteTokenizer()
        parts = []
        for ids in tok.encode_batch(documents(n_docs, seed=seed, lexicon_seed=0)):
            parts += [ids, np.array([tok.eos_id])]
        self.tokens = torch.from_numpy(np.concatenate(parts))

    def batch(self, b: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [b, T], labels [b, T] (the next tokens)."""
        start = torch.randint(0, len(self.tokens) - T - 1, (b,), generator=g)
        w = torch.stack([self.tokens[s:s + T + 1] for s in start.tolist()])
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def write_task_shards(out_dir, samples: int, seq_len: int, pairs: Sequence[int] = (8, 16, 32, 64),
                      weights: Sequence[float] | None = None, text_fraction: float = 0.25, seed: int = 0,
                      samples_per_shard: int = 64, vocab_offset: int = 0, overwrite: bool = False) -> dict:
    """Write ``samples`` windows of ``seq_len + 1`` byte-tokenizer ids: MQAR with N drawn from ``pairs``
    (by ``weights``), right-padded with 0, loss on the query answers; or, with probability
    ``text_fraction``, a window of synthetic text (corpus seed ``seed``), loss everywhere. ``vocab_offset``
    moves the MQAR ids to ``offset .. offset + 255`` (statex_dist.eval.mqar); the manifest's vocabulary then
    spans both blocks. Returns the manifest."""

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass overwrite=True to replace it")
    if 4 * max(pairs) > seq_len + 1:
        raise DataError(f"MQAR with {max(pairs)} pairs needs {4 * max(pairs)} tokens; seq_len {seq_len} is too short")
    tok = ByteTokenizer()
    vocab = max(tok.vocab_size, vocab_offset + 256)
    dtype = fmt.token_dtype_name(vocab)
    field = fmt.sample_field(dtype)
    g = torch.Generator().manual_seed(seed)
    text = TextWindows(seed) if text_fraction > 0 else None
    is_text = torch.rand(samples, generator=g) < text_fraction
    ids, labels = mqar_batch(list(pairs), samples, g, weights=weights, seq_len=seq_len + 1,
                              vocab_offset=vocab_offset)
    mask = labels[:, :seq_len] != IGNORE                                                 # [S, T]
    if text is not None and bool(is_text.any()):
        x, y = text.batch(int(is_text.sum()), seq_len, g)
        ids[is_text] = torch.cat([x, y[:, -1:]], 1)
        mask[is_text] = True
    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = shard_writer(tmp, samples_per_shard)
        try:
            for i in range(samples):
                writer.write({"__key__": f"{i:0{fmt.KEY_DIGITS}d}", field: fmt.encode_tokens(ids[i].numpy(), dtype),
                              fmt.MASK_FIELD: mask[i].numpy().astype(np.uint8).tobytes()})
        finally:
            writer.close()
        manifest = fmt.write_manifest(
            tmp, seq_len=seq_len, dtype=dtype, tokenizer=tokenizer_entry(tok, vocab),
            shards=shard_table(tmp, samples, samples_per_shard), total_tokens=int(mask.sum()), loss_mask=True,
            task={"kind": "mqar+text", "pairs": list(pairs), "weights": list(weights) if weights else None,
                  "text_fraction": text_fraction, "seed": seed, "vocab_offset": vocab_offset,
                  "text_samples": int(is_text.sum())})
    return manifest
