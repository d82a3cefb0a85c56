"""Tokenisation throughput of tools/make_shards.py with a real BPE tokenizer, against datasets' batched map.

The text: every .md / .rst / .txt file over 2 KB under this machine's site-packages, /usr/share/doc and
the Python library (READMEs, change logs, licences, documentation), cut into documents at blank lines of
about 4 KB. A byte-level BPE of 32,000 ids is trained on it here with the `tokenizers` library and saved as
a tokenizer folder. The documents are written as .jsonl.zst and as parquet (row groups of 2,000 rows).

Each case runs in a fresh process (so its peak RSS is its own): make_shards (seq-len 2048, 1 or 2
tokenising processes, --unit-mb 4 so a file is several pieces) against `datasets.load_dataset` +
`Dataset.map(batched=True, num_proc=N)` with the same tokenizer, EOS appended, writing the same token ids
(its Arrow cache); the ids of both are compared. Reported: wall time, tokens/s, tokens/s per tokenising
process, tokens per CPU-second of all the case's processes (imports and start-up included; on a shared
machine the figure that load moves least), the peak RSS of the largest process of the run. One more make_shards run in this process times the
main process's own share (routing, packing, tar writing, hashing) to give the ceiling one main process sets.

    .venv/bin/python benchmarks/data_prep.py [--mb 16] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 32000
SEQ = 2048
CHUNKS = 8    # jsonl.zst files, and parquet row groups


def local_text(limit: int) -> list[str]:
    """Documents of about 4 KB from the machine's own documentation files, up to ``limit`` bytes."""
    roots = [Path(sys.prefix) / "lib", Path("/usr/share/doc"), Path(os.__file__).parent]
    docs, size = [], 0
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.suffix not in (".md", ".rst", ".txt") or not p.is_file() or p.stat().st_size < 2048:
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            cur = []
            for para in text.split("\n\n"):
                cur.append(para)
                if sum(map(len, cur)) > 4096:
                    docs.append("\n\n".join(cur))
                    size += len(docs[-1])
                    cur = []
            if cur and "".join(cur).strip():
                docs.append("\n\n".join(cur))
                size += len(docs[-1])
            if size >= limit:
                return docs
    return docs


def train_tokenizer(docs: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)


def write_inputs(docs: list[str], tmp: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    (tmp / "zst").mkdir()
    step = -(-len(docs) // CHUNKS)
    for i in range(CHUNKS):   # chunk files, as SlimPajama ships: one piece each
        lines = "".join(json.dumps({"text": d}) + "\n" for d in docs[i * step:(i + 1) * step]).encode()
        (tmp / "zst" / f"chunk_{i}.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(lines))
    pq.write_table(pa.table({"text": docs}), tmp / "docs.parquet", row_group_size=step)
    return {"jsonl.zst": tmp / "zst", "parquet": tmp / "docs.parquet"}


# --- one case, in its own process -------------------------------------------------------------------------

def case_make_shards(path: Path, tok: Path, workers: int, out: Path) -> dict:
    from statex_dist.data.writer import ShardOptions, make_shards
    t = time.perf_counter()
    m = make_shards([path], out, ShardOptions(seq_len=SEQ, samples_per_shard=256, tokenizer=str(tok),
                                              workers=workers, unit_bytes=4 << 20), progress=False)
    return {"seconds": time.perf_counter() - t, "tokens": m["corpus_tokens"], "documents": m["documents"]}


def case_datasets(path: Path, tok: Path, workers: int, out: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer
    datasets.disable_progress_bars()
    t = time.perf_counter()
    hf = AutoTokenizer.from_pretrained(str(tok))
    eos = hf.eos_token_id

    def encode(batch):
        ids = hf(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [x + [eos] for x in ids]}

    kind = "parquet" if path.suffix == ".parquet" else "json"
    files = str(path) if kind == "parquet" else sorted(map(str, path.glob("*.jsonl.zst")))
    ds = datasets.load_dataset(kind, data_files=files, split="train", cache_dir=str(out / "cache"))
    ds = ds.map(encode, batched=True, num_proc=workers if workers > 1 else None, remove_columns=["text"],
                batch_size=1000)
    seconds = time.perf_counter() - t
    import numpy as np
    ids = np.concatenate([np.asarray(x, dtype=np.int64) for x in ds.with_format("numpy")["ids"]])
    np.save(out / "ids.npy", ids)
    return {"seconds": seconds, "tokens": int(len(ids)), "documents": len(ds)}


def run_case(args: list[str], repeat: int) -> dict:
    """A case in a child process, the fastest of ``repeat`` runs (the machine is shared): its result and the
    largest peak RSS among its processes."""
    best = None
    for _ in range(repeat):
        out_dir = Path(args[-1])
        if out_dir.exists():
            shutil_rm(out_dir)
        if args[0] == "datasets":
            out_dir.mkdir()
        with open(out_dir.parent / "stdout", "w+") as fo, open(out_dir.parent / "stderr", "w+") as fe:
            proc = subprocess.Popen([sys.executable, __file__, "--case", *args], stdout=fo, stderr=fe, cwd=ROOT)
            # wait4 (not Popen.wait): its ru_maxrss is the peak of the child or of any descendant it waited
            # for (its pool), in KB
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            fo.seek(0)
            fe.seek(0)
            stdout, stderr = fo.read(), fe.read()
        if proc.returncode:
            raise SystemExit(f"case {args} failed:\n{stderr[-3000:]}")
        out = json.loads(stdout.strip().splitlines()[-1])
        out["peak_rss_mb"] = usage.ru_maxrss / 1024
        out["cpu_seconds"] = usage.ru_utime + usage.ru_stime   # the case's processes together, imports included
        if best is None or out["seconds"] < best["seconds"]:
            best = out
    return best


def main_share(path: Path, tok: Path, out: Path) -> dict:
    """Seconds the main process spends routing pieces into shards, against tokenising them (1 process)."""
    from statex_dist.data import writer
    spent = {"_tokenise_piece": 0.0, "_route": 0.0}
    cpu = dict(spent)
    for name in spent:
        real = getattr(writer, name)

        def timed(*a, _real=real, _name=name):
            t, c = time.perf_counter(), time.process_time()
            try:
                return _real(*a)
            finally:
                spent[_name] += time.perf_counter() - t
                cpu[_name] += time.process_time() - c
        setattr(writer, name, timed)
    m = writer.make_shards([path], out, writer.ShardOptions(seq_len=SEQ, samples_per_shard=256, tokenizer=str(tok),
                                                            unit_bytes=4 << 20), progress=False)
    return {"tokens": m["corpus_tokens"], "tokenise_s": spent["_tokenise_piece"], "main_s": spent["_route"],
            "tokenise_cpu_s": cpu["_tokenise_piece"], "main_cpu_s": cpu["_route"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=16.0, help="MB of text")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each case; the fastest is reported")
    ap.add_argument("--case", nargs=5, help=argparse.SUPPRESS)   # tool input tokenizer workers out
    a = ap.parse_args()
    if a.case:
        tool, path, tok, workers, out = a.case
        fn = case_make_shards if tool == "make_shards" else case_datasets
        print(json.dumps(fn(Path(path), Path(tok), int(workers), Path(out))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        docs = local_text(int(a.mb * 1e6))
        train_tokenizer(docs, tmp / "tok")
        print(f"text: {len(docs):,} documents, {sum(map(len, docs)) / 1e6:.1f} MB; BPE of {VOCAB} trained in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        inputs = write_inputs(docs, tmp)
        rows = []
        for fmt_name, path in inputs.items():
            for workers in (1, 2):
                res = {}
                for tool in ("make_shards", "datasets"):
                    out = tmp / f"{tool}-{fmt_name}-{workers}"
                    res[tool] = run_case([tool, str(path), str(tmp / "tok"), str(workers), str(out)], a.repeat)
                # the same token ids: make_shards' stream (its samples, overlapping by one) against datasets'
                import numpy as np

                from tests.test_data_shards import read_tar_samples
                samples = read_tar_samples(tmp / f"make_shards-{fmt_name}-{workers}")
                stream = np.concatenate([samples[0]] + [samples[i][1:] for i in range(1, len(samples))])
                ids = np.load(tmp / f"datasets-{fmt_name}-{workers}" / "ids.npy")
                assert res["make_shards"]["tokens"] == len(ids), (res, len(ids))
                assert np.array_equal(stream, ids[:len(stream)]), "make_shards and datasets wrote other ids"
                for tool, r in res.items():
                    row = {"input": fmt_name, "workers": workers, "tool": tool, **r,
                           "tokens_per_s": r["tokens"] / r["seconds"],
                           "tokens_per_s_per_worker": r["tokens"] / r["seconds"] / workers,
                           "tokens_per_cpu_s": r["tokens"] / r["cpu_seconds"]}
                    rows.append(row)
                    print(f"{fmt_name:9} {tool:11} workers {workers}: {r['seconds']:6.1f} s, "
                          f"{row['tokens_per_s']:>10,.0f} tok/s, {row['tokens_per_s_per_worker']:>10,.0f} tok/s "
                          f"per worker, {row['tokens_per_cpu_s']:>10,.0f} tok per CPU-s, peak RSS "
                          f"{r['peak_rss_mb']:.0f} MB", flush=True)
                shutil_rm(tmp / f"datasets-{fmt_name}-{workers}")
                shutil_rm(tmp / f"make_shards-{fmt_name}-{workers}")
        share = main_share(inputs["parquet"], tmp / "tok", tmp / "share")
        main_rate = share["tokens"] / share["main_cpu_s"]
        print(f"main process: {share['main_cpu_s']:.2f} CPU-s of routing/packing/writing for {share['tokens']:,} "
              f"tokens ({main_rate:,.0f} tok/s ceiling) against {share['tokenise_cpu_s']:.1f} CPU-s of tokenising "
              f"({share['tokens'] / share['tokenise_cpu_s']:,.0f} tok per CPU-s)", flush=True)
        # per process: tokens per CPU-second of the 2-process runs (wall time on a shared machine says more
        # about the neighbours than about the tool)
        best = max(r["tokens_per_cpu_s"] for r in rows if r["tool"] == "make_shards" and r["workers"] == 2)
        workers64 = 63   # 64 cores: 63 tokenising processes and the main process
        rate64 = min(best * workers64, main_rate)
        print(f"EXTRAPOLATED, not measured: 10B tokens on 64 cores at {best:,.0f} tok/s per process x "
              f"{workers64} processes (capped by the main process's {main_rate:,.0f} tok/s): "
              f"{1e10 / rate64 / 3600:.2f} h", flush=True)
        if a.out:
            a.out.write_text(json.dumps({"rows": rows, "main_share": share, "extrapolated_10B_64_cores_h":
                                         1e10 / rate64 / 3600}, indent=1))


def shutil_rm(p: Path) -> None:
    import shutil
    shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
