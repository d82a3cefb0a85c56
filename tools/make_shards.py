#!/usr/bin/env python
"""Tokenise text into webdataset shards of fixed-length token windows for training.

  python tools/make_shards.py corpus/ -o data/train --tokenizer bytes --seq-len 2048
  python tools/make_shards.py 'slimpajama/train/**/*.jsonl.zst' -o data/train --tokenizer /models/llama-tokenizer \\
      --workers 64 --max-tokens 10_000_000_000 --valid-fraction 0.001

Inputs: .txt (one document per file, or per blank-line-separated block with --txt-docs blank-line), .jsonl
and .json (a --text-field a record), each also .gz / .zst / .xz; .parquet (column --text-field, a row group
at a time); a Hugging Face datasets save_to_disk folder (its Arrow files, with pyarrow); a Megatron-LM /
GPT-NeoX indexed dataset PREFIX.bin + PREFIX.idx (already tokenised: re-cut into samples after a check that
--tokenizer's vocabulary and EOS match the data). A folder stands for every input below it, a quoted glob
('**' recursive) for its matches, @FILE for the inputs listed in FILE. Documents are joined with the
tokenizer's EOS and cut into samples of seq_len + 1 tokens at stride seq_len (input_ids = sample[:-1],
labels = sample[1:]). --tokenizer bytes: ids 0..255 are UTF-8 bytes, 256 EOS, 257 PAD (vocab 258).
Tokens are stored raw little-endian: uint16 if the vocabulary has <= 65536 ids, else int32.

--max-tokens takes exactly that many tokens (EOS included; the last document cut) from the documents in a
seeded order of the inputs' pieces (--seed; pieces: --unit-mb of a large file, a parquet row group, ...).
--valid-fraction sends each document whose content hash falls below it to a second folder (--valid-output),
the same documents on every run and never one to both; --valid-tokens caps that split.
A killed run started again with the same arguments continues from its work folder (.NAME.make_shards
beside the output; it holds the tokenised pieces, about the shards' size again, until the end) and writes
the same bytes as a run never stopped. The output folder holds shard-NNNNNN.tar and manifest.json;
statex_dist/data/format.py describes both.
"""
import sys
import time

from statex_dist.cli_errors import Parser, count, fraction_below_one, positive_float, positive_int, run_main
from statex_dist.data.writer import ShardOptions, make_shards


EXAMPLE = """example:
  python tools/make_shards.py corpus/ -o data/train --tokenizer bytes --seq-len 2048 --samples-per-shard 1024
  python tools/make_shards.py 'fineweb/*.parquet' @more-inputs.txt -o data/fw --tokenizer /models/tok \\
      --workers 16 --max-tokens 2000000000 --valid-tokens 20000000 --seed 1
"""


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def main(argv=None) -> int:
    return run_main("make_shards.py", _main, argv)


def _main(argv=None) -> int:
    ap = Parser(prog="make_shards.py", description=__doc__, epilog=EXAMPLE)
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="files (.txt/.jsonl/.json[.gz|.zst|.xz], .parquet, PREFIX.bin/.idx), datasets folders, "
                         "folders of them, globs, @FILE lists")
    ap.add_argument("-o", "--output", required=True, metavar="PATH", help="shard folder to create")
    ap.add_argument("--tokenizer", default="bytes", metavar="bytes|PATH",
                    help="'bytes' or a local Hugging Face tokenizer folder")
    ap.add_argument("--seq-len", type=positive_int, default=2048, help="tokens of input_ids per sample")
    ap.add_argument("--samples-per-shard", type=positive_int, default=1024, help="samples per tar file")
    ap.add_argument("--workers", type=positive_int, default=1, help="tokenisation processes")
    ap.add_argument("--text-field", default="text", help="the JSON field / parquet or Arrow column holding the document")
    ap.add_argument("--txt-docs", choices=["file", "blank-line"], default="file",
                    help="a .txt file is one document, or one per blank-line-separated block")
    ap.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS to every document")
    ap.add_argument("--max-tokens", type=positive_int, metavar="INT",
                    help="stop the train split at exactly this many tokens, taken in the --seed order")
    ap.add_argument("--valid-fraction", type=fraction_below_one, default=0.0,
                    help="documents whose content hash falls below this fraction go to --valid-output")
    ap.add_argument("--valid-tokens", type=positive_int, metavar="INT",
                    help="stop the valid split at exactly this many tokens (alone: drawn from a 0.01 fraction)")
    ap.add_argument("--valid-output", metavar="PATH", help="the valid split's folder (default: OUTPUT-valid)")
    ap.add_argument("--seed", type=count, metavar="INT",
                    help="shuffle the inputs' pieces with this seed (default: input order; 0 with --max-tokens)")
    ap.add_argument("--unit-mb", type=positive_float, default=64.0,
                    help="large files are cut into pieces of about this many MB, for --workers and --seed")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    opts = ShardOptions(seq_len=a.seq_len, samples_per_shard=a.samples_per_shard, tokenizer=a.tokenizer,
                        text_field=a.text_field, txt_docs=a.txt_docs, add_bos=a.add_bos, workers=a.workers,
                        max_tokens=a.max_tokens, valid_fraction=a.valid_fraction, valid_tokens=a.valid_tokens,
                        valid_output=a.valid_output, seed=a.seed, unit_bytes=max(1, int(a.unit_mb * 2**20)))
    t0 = time.time()
    m = make_shards(a.inputs, a.output, opts, overwrite=a.overwrite, progress=not a.quiet)
    tok = m["tokenizer"]
    v = m.get("valid")
    valid = (f"; valid: {v['total_samples']} samples in {v['shards']} shards ({_human(v['corpus_tokens'])} tokens, "
             f"{v['documents']} documents) to {v['folder']}") if v else ""
    short = (f" (the inputs hold only {_human(m['corpus_tokens'])} of --max-tokens {_human(a.max_tokens)})"
             if a.max_tokens and m["corpus_tokens"] < a.max_tokens else "")
    dt = time.time() - t0
    print(f"wrote {len(m['shards'])} shards, {m['total_samples']} samples x {m['seq_len']} tokens "
          f"({m['total_tokens']:,} label tokens of {m['corpus_tokens']:,}; {m['documents']} documents){short} "
          f"[{tok['name']}: vocab {tok['vocab_size']}, eos {tok['eos_id']}, {m['token_dtype']}] "
          f"to {a.output}{valid} in {dt:.1f}s ({m['corpus_tokens'] / max(dt, 1e-9):,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
