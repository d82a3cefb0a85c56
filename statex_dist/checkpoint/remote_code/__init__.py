"""Modeling code for exports whose recurrent-state shapes differ per layer.

The stock classes (fla's GLAForCausalLM and GatedDeltaNetForCausalLM, transformers' Mamba2ForCausalLM) build
every layer alike. An export whose GLA or Gated DeltaNet heads or Mamba2 d_state differ per layer therefore
gets model_type ``statex_gla`` / ``statex_gated_deltanet`` / ``statex_mamba2``, an ``auto_map`` and the two
template files of this folder copied beside its weights, so ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)`` loads it (lm-eval-harness's HF backend included). The templates build each layer
from the libraries' own modules with that layer's shape (fla's for GLA and Gated DeltaNet, transformers'
Mamba2 for Mamba2), so the libraries' kernels run where they exist;
they are not imported here.

Such Mamba2 exports always use transformers' naming (``backbone.embeddings``, safetensors), also from
mamba_ssm sources: one layout for the remote code to read. A mamba_ssm source's padded vocabulary is
kept as ``pad_vocab_size_multiple`` with the real ``vocab_size``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from statex_dist import archs
from statex_dist.models.config import ModelConfig

TEMPLATE_DIR = Path(__file__).resolve().parent
TEMPLATES = ("configuration_statex.py", "modeling_statex.py")


def needs_remote_code(config: ModelConfig) -> bool:
    """Whether the stock classes cannot build the model: its per-layer state shapes (the ones StateX grows:
    GLA heads, Gated DeltaNet key and value heads, Mamba2 d_state) differ."""
    resize = archs.of(config).expansion.resize   # with no layers chosen: the fields it sets, as they are
    fields = resize(config, (), 0) if resize is not None else {archs.of(config).expansion.per_layer: None}
    return any(len(set(getattr(config, f))) > 1 for f in fields)


def set_model_type(cfg: dict, config: ModelConfig) -> bool:
    """Point config.json (``cfg``, edited in place) at the remote code or, for a model whose layers are
    all alike, at the stock class (also when ``cfg`` came from an earlier remote-code export). Returns
    whether the template files must be written beside it."""
    remote = archs.of(config).remote
    if needs_remote_code(config):
        cfg.update(model_type=remote.model_type, architectures=[remote.model_class],
                   auto_map={"AutoConfig": f"configuration_statex.{remote.config_class}",
                             "AutoModelForCausalLM": f"modeling_statex.{remote.model_class}"})
        return True
    if cfg.get("model_type") in {a.remote.model_type for a in archs.ARCHS.values()}:
        cfg.update(model_type=remote.stock_type, architectures=[remote.stock_class])
        cfg.pop("auto_map", None)
    return False


def write_templates(folder: Path) -> None:
    for name in TEMPLATES:
        shutil.copyfile(TEMPLATE_DIR / name, Path(folder) / name)
