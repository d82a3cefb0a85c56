"""A deterministic synthetic corpus for tests, benchmarks and the CPU demo.

Documents are random "words" drawn Zipf-like from a fixed lexicon, with a key-value fact stated near
the start and asked again at the end ("... the code of kel is 4821 ... what is the code of kel? 4821"),
so a small model has both local statistics and one long-range recall to learn.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(_LETTERS) for _ in range(rng.randint(2, 8))))
    return sorted(words)


def documents(n_docs: int, seed: int = 0, words: tuple[int, int] = (50, 400), lexicon: int = 2000,
              lexicon_seed: Optional[int] = None) -> list[str]:
    """``n_docs`` documents of ``words[0]..words[1]`` words each; the same arguments give the same text.

    lexicon_seed: draw the word list from its own seed, so corpora of different ``seed`` speak the same
    language (a held-out set then measures generalisation, not a foreign lexicon); default: from ``seed``.
    """
    rng = random.Random(seed)
    lex = _lexicon(rng if lexicon_seed is None else random.Random(lexicon_seed), lexicon)
    weights = [1.0 / (i + 1) for i in range(len(lex))]
    out = []
    for _ in range(n_docs):
        n = rng.randint(*words)
        body = rng.choices(lex, weights, k=n)
        key, value = rng.choice(lex), rng.randint(1000, 9999)
        fact = f"the code of {key} is {value}."
        body.insert(min(len(body), rng.randint(0, 10)), fact)
        out.append(" ".join(body) + f" what is the code of {key}? {value}")
    return out


def write_corpus(folder: str | Path, n_files: int = 4, docs_per_file: int = 50, seed: int = 0,
                 kind: str = "jsonl", **kw) -> list[Path]:
    """Write ``n_files`` files (``kind``: "jsonl" with a ``text`` field, "txt" one document per file, or
    "txt-blank" blank-line-separated documents); return their paths in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        docs = documents(docs_per_file, seed=seed * 1_000_003 + i, **kw)
        if kind == "jsonl":
            p = folder / f"part-{i:04d}.jsonl"
            p.write_text("".join(json.dumps({"text": d, "id": f"{i}-{j}"}) + "\n" for j, d in enumerate(docs)))
        elif kind == "txt-blank":
            p = folder / f"part-{i:04d}.txt"
            p.write_text("\n\n".join(docs) + "\n")
        elif kind == "txt":
            p = folder / f"doc-{i:04d}.txt"
            p.write_text(" ".join(docs) + "\n")
        else:
            raise ValueError(f"kind must be jsonl, txt or txt-blank, not {kind!r}")
        paths.append(p)
    return paths


def main(argv=None) -> int:
    """``python -m statex_dist.data.synthetic OUT [--files N --docs M --seed S --kind jsonl]``, then e.g.
    ``tools/make_shards.py OUT -o runs/data/cpu-bytes-128 --seq-len 128 --samples-per-shard 64``."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m statex_dist.data.synthetic", description=main.__doc__)
    ap.add_argument("out")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--docs", type=int, default=200, help="documents per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["jsonl", "txt", "txt-blank"], default="jsonl")
    a = ap.parse_args(argv)
    paths = write_corpus(a.out, a.files, a.docs, a.seed, a.kind)
    print(f"wrote {len(paths)} files to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
