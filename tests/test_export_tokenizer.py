"""An export is whole: the source's tokenizer (and other side files) reaches every export, also one made from
a training checkpoint of a run that started from that source."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; never reach for the hub

import subprocess  # noqa: E402
import sys  # noqa: E402

from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from statex_dist.reshard import run  # noqa: E402
from tests.fla_reference import make_fla_gla  # noqa: E402
from tests.train_helpers import ROOT, make_shards  # noqa: E402

TEXT = "the cat sat on the mat near the dog"


def save_tokenizer(folder):
    """A tiny word-level tokenizer built offline, saved the way a hub model ships its own."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "[EOS]", *sorted(set(TEXT.split()))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
    hf.save_pretrained(folder)
    return hf


def assert_same_tokenizer(export, source):
    got = AutoTokenizer.from_pretrained(export)
    assert got(TEXT)["input_ids"] == source(TEXT)["input_ids"] and got.eos_token == "[EOS]"


def test_hf_and_sharded_exports_keep_the_tokenizer(tmp_path):
    src = tmp_path / "src"
    make_fla_gla(src, vocab_size=101)
    tok = save_tokenizer(src)
    run(["--src", str(src), "--dst", str(tmp_path / "hf"), "--format", "hf"])
    run(["--src", str(src), "--dst", str(tmp_path / "tp2"), "--tp", "2"])
    run(["--src", str(tmp_path / "tp2"), "--dst", str(tmp_path / "back"), "--format", "hf"])
    for export in ("hf", "back"):
        assert_same_tokenizer(tmp_path / export, tok)


def test_training_checkpoint_exports_the_source_tokenizer(tmp_path):
    src = tmp_path / "src"
    make_fla_gla(src, vocab_size=260, use_short_conv=True)  # 260: the byte shards' vocabulary
    tok = save_tokenizer(src)
    shards = make_shards(tmp_path / "data")
    run_dir = tmp_path / "run"
    settings = {"model.source": src, "model.dtype": "fp32", "data.train": shards, "data.seq_len": 64,
                "data.micro_batch": 2, "data.global_batch": 2, "data.workers": 1, "data.shuffle_buffer": 16,
                "schedule.total_steps": 2, "schedule.warmup_steps": 1, "logging.dir": run_dir,
                "logging.every": 100, "checkpoint.every": 2, "eval.tasks": "[]"}
    subprocess.run(["bash", "launch/train.sh", "configs/cpu-gla-tiny.yaml", *(f"{k}={v}" for k, v in settings.items())],
                   cwd=ROOT, env=dict(os.environ, DEBUG="1", PYTHON=sys.executable), check=True, timeout=600)
    ckpt = run_dir / "checkpoints" / "step00000002" / "model"
    run(["--src", str(ckpt), "--dst", str(tmp_path / "export"), "--format", "hf"])
    assert_same_tokenizer(tmp_path / "export", tok)
    # the source's config.json travels with the run: the export keeps its keys (bos_token_id, initializer_range
    # ...), not only those this project writes; a fresh config would drop them
    import json
    source_cfg = json.loads((src / "config.json").read_text())
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert set(source_cfg) <= set(exported), sorted(set(source_cfg) - set(exported))
    assert exported["initializer_range"] == source_cfg["initializer_range"]
