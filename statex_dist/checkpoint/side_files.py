"""The files of a Hugging Face folder that are not weights but belong with them: the tokenizer (lm-eval,
``generate`` and ``AutoTokenizer`` need it), the generation config, the chat template and the pretraining
record of tools/pretrain_tiny.py (``pretrain.json``: the MQAR vocabulary offset the model was trained with,
which its evaluations use, statex_dist.eval.mqar.trained_vocab_offset). The one place that decides which
files travel, for every path:

- HF folder -> HF folder: copied beside the new weights;
- HF folder -> sharded checkpoint: kept under ``hf_files/`` until the export back;
- training run -> its checkpoints: each checkpoint's ``model/hf_files/`` holds ``model.source``'s, so a
  training checkpoint exports whole as well.
"""
from __future__ import annotations

import shutil
from pathlib import Path

PRETRAIN_RECORD = "pretrain.json"
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "generation_config.json",
              "chat_template.jinja", "chat_template.json", PRETRAIN_RECORD)
SIDE_DIR = "hf_files"


def side_files_of(checkpoint: Path) -> Path:
    """Where ``checkpoint`` keeps its side files: an HF folder (it has a config.json) beside its weights, a
    sharded checkpoint under ``hf_files/``."""
    checkpoint = Path(checkpoint)
    return checkpoint if (checkpoint / "config.json").is_file() else checkpoint / SIDE_DIR


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy the side files in folder ``src`` into ``dst`` (made if missing); returns their names."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def keep_side_files(source: str, sharded: Path) -> list[str]:
    """Give the sharded checkpoint folder ``sharded`` the side files of ``source`` (a checkpoint path, or
    ``scratch``: none), before its manifest is written, which lists them."""
    src = side_files_of(Path(source))
    return copy_side_files(src, Path(sharded) / SIDE_DIR) if source != "scratch" and src.is_dir() else []
