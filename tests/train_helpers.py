"""Shared set-up of the training tests: a small corpus in real webdataset shards, run configs, runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GLA = {"arch": "gla", "vocab_size": 260, "hidden_size": 32, "num_layers": 4, "num_heads": 4,
       "use_short_conv": True, "tie_word_embeddings": False}
GDN = {"arch": "gdn", "vocab_size": 260, "hidden_size": 32, "num_layers": 4, "num_heads": [2, 1, 2, 1],
       "num_v_heads": [4, 1, 4, 1], "key_dim": 32, "value_dim": 32, "use_short_conv": True,
       "tie_word_embeddings": False}
MAMBA2 = {"arch": "mamba2", "vocab_size": 260, "hidden_size": 32, "num_layers": 4, "d_state": 8, "headdim": 16,
          "ngroups": 1, "chunk_size": 16, "tie_word_embeddings": True}


def make_shards(folder: Path, seq_len: int = 64, samples_per_shard: int = 32) -> Path:
    """tools/make_shards.py on the synthetic corpus (bytes tokenizer): real tars + manifest."""
    if (folder / "shards" / "manifest.json").exists():
        return folder / "shards"
    from statex_dist.data.synthetic import write_corpus
    write_corpus(folder / "corpus", n_files=2, docs_per_file=40)
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), str(folder / "corpus"), "-o",
                    str(folder / "shards"), "--tokenizer", "bytes", "--seq-len", str(seq_len),
                    "--samples-per-shard", str(samples_per_shard), "--quiet"], check=True, timeout=120)
    return folder / "shards"


def overrides(model: dict, shards: Path, run_dir: Path, steps: int = 12, **extra) -> list[str]:
    import json
    base = {
        "model.source": "scratch", "model.config": json.dumps(model), "model.dtype": "fp32",
        "data.train": str(shards), "data.seq_len": 64, "data.micro_batch": 2, "data.global_batch": 4,
        "data.workers": 1, "data.shuffle_buffer": 16,
        "optimizer.lr": 3e-3, "schedule.total_steps": steps, "schedule.warmup_steps": 2,
        "logging.dir": str(run_dir), "logging.every": 100, "checkpoint.every": 0, "seed": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train_worker(rank, world, overrides_list):
    """One rank of a run (spawned by tests/dist_utils.run_workers): returns the per-step losses."""
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    cfg = load_run_config(None, overrides_list)
    run = Run(cfg)
    out = run.train()
    state.destroy()
    return out["losses"]


def aligned_shards(folder: Path, per_shard: int = 4, seq_len: int = 32, shards: int = 24) -> Path:
    """``shards`` full shards of ``per_shard`` samples (a short last shard is dropped from the manifest), every
    sample ``seq_len`` labelled tokens: the loss of a step is then the mean over its samples however the
    layout splits them into micro-batches (which samples a step reads never depends on the layout).
    """
    import json

    from statex_dist.data.synthetic import write_corpus
    from statex_dist.data.writer import ShardOptions, make_shards as write_shards
    out = folder / "aligned"
    if (out / "manifest.json").exists():
        return out
    corpus = write_corpus(folder / "aligned-corpus", n_files=2, docs_per_file=30, seed=5)
    m = write_shards(corpus, out, ShardOptions(seq_len=seq_len, samples_per_shard=per_shard), progress=False)
    full = [s for s in m["shards"] if s["samples"] == per_shard][:shards]
    if len(full) < shards:
        raise ValueError(f"the corpus gave {len(full)} full shards of {per_shard}, fewer than {shards}")
    for s in m["shards"][len(full):]:
        (out / s["file"]).unlink()
    m["shards"], m["total_samples"] = full, per_shard * len(full)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def checkpoint_weights(run_dir: Path, step: int) -> dict:
    """Full-shape tensors of the sharded weights a run wrote at ``step`` (name -> tensor)."""
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    ck = ShardedCheckpoint(run_dir / "checkpoints" / f"step{step:08d}" / "model")
    return {n: ck.get(n) for n in ck.names()}
