#!/usr/bin/env python
"""Tokenise text into webdataset shards of fixed-length token windows for training.

  python tools/make_shards.py corpus/ -o data/train --tokenizer bytes --seq-len 2048
  python tools/make_shards.py a.jsonl b.jsonl -o data/train --tokenizer /models/llama-tokenizer --workers 8

Inputs: .jsonl (a 'text' field a line) and .txt (one document per file, or per blank-line-separated block
with --txt-docs blank-line); a folder stands for every .txt/.jsonl below it. Documents are joined with the
tokenizer's EOS and cut into samples of seq_len + 1 tokens at stride seq_len (input_ids = sample[:-1],
labels = sample[1:]). --tokenizer bytes: ids 0..255 are UTF-8 bytes, 256 EOS, 257 PAD (vocab 258).
Tokens are stored raw little-endian: uint16 if the vocabulary has <= 65536 ids, else int32.
The output folder holds shard-NNNNNN.tar and manifest.json; statex_dist/data/format.py describes both.
"""
import sys
import time

from statex_dist.cli_errors import Parser, positive_int, run_main
from statex_dist.data.writer import ShardOptions, make_shards


EXAMPLE = """example:
  python tools/make_shards.py corpus/ -o data/train --tokenizer bytes --seq-len 2048 --samples-per-shard 1024
"""


def main(argv=None) -> int:
    return run_main("make_shards.py", _main, argv)


def _main(argv=None) -> int:
    ap = Parser(prog="make_shards.py", description=__doc__, epilog=EXAMPLE)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt / .jsonl files or folders of them")
    ap.add_argument("-o", "--output", required=True, metavar="PATH", help="shard folder to create")
    ap.add_argument("--tokenizer", default="bytes", metavar="bytes|PATH",
                    help="'bytes' or a local Hugging Face tokenizer folder")
    ap.add_argument("--seq-len", type=positive_int, default=2048, help="tokens of input_ids per sample")
    ap.add_argument("--samples-per-shard", type=positive_int, default=1024, help="samples per tar file")
    ap.add_argument("--workers", type=positive_int, default=1, help="tokenisation processes")
    ap.add_argument("--text-field", default="text", help="JSONL field holding the document")
    ap.add_argument("--txt-docs", choices=["file", "blank-line"], default="file",
                    help="a .txt file is one document, or one per blank-line-separated block")
    ap.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS to every document")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    opts = ShardOptions(seq_len=a.seq_len, samples_per_shard=a.samples_per_shard, tokenizer=a.tokenizer,
                        text_field=a.text_field, txt_docs=a.txt_docs, add_bos=a.add_bos, workers=a.workers)
    t0 = time.time()
    m = make_shards(a.inputs, a.output, opts, overwrite=a.overwrite, progress=not a.quiet)
    tok = m["tokenizer"]
    print(f"wrote {len(m['shards'])} shards, {m['total_samples']} samples x {m['seq_len']} tokens "
          f"({m['total_tokens']:,} label tokens of {m['corpus_tokens']:,}; {m['documents']} documents) "
          f"[{tok['name']}: vocab {tok['vocab_size']}, eos {tok['eos_id']}, {m['token_dtype']}] "
          f"to {a.output} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
