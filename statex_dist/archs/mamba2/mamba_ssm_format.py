"""mamba_ssm's Mamba2 checkpoints (state-spaces/mamba2-*): config.json with ssm_cfg, pytorch_model.bin,
``backbone.`` prefix, embedding padded to ``pad_vocab_size_multiple``, ``lm_head.weight`` a tied copy."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.archs.mamba2.transformers_format import TransformersMamba2
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_format import HFFormat

MAMBA2_DEFAULTS = dict(d_state=128, expand=2, headdim=64, ngroups=1, d_conv=4, chunk_size=256)


class MambaSSM(HFFormat):
    name, arch, prefix = "mamba_ssm", "mamba2", "backbone."
    description = "mamba_ssm Mamba2 (d_model / n_layer / ssm_cfg)"
    per_layer_key = "statex_d_state"
    weights_file = "pytorch_model.bin"
    # the remote code reads one Mamba2 layout: transformers' (a mamba_ssm config.json shares no keys)
    remote_code_format = TransformersMamba2

    @classmethod
    def matches(cls, hf_cfg: dict) -> bool:
        return "d_model" in hf_cfg and "n_layer" in hf_cfg

    @classmethod
    def read_config(cls, hf_cfg: dict) -> Mamba2Config:
        ssm = dict(hf_cfg.get("ssm_cfg") or {})
        layer = ssm.pop("layer", "Mamba2")
        if layer != "Mamba2":
            raise CheckpointError(f"config.json: ssm_cfg.layer={layer!r}; only Mamba2 checkpoints are supported")
        if hf_cfg.get("d_intermediate", 0):
            raise CheckpointError("config.json: d_intermediate > 0 (an MLP after each mixer) is not supported")
        if hf_cfg.get("attn_layer_idx"):
            raise CheckpointError("config.json: attn_layer_idx (hybrid attention layers) is not supported")
        if not hf_cfg.get("rms_norm", True) or not ssm.get("rmsnorm", True):
            raise CheckpointError("config.json: LayerNorm models (rms_norm=false) are not supported")
        if ssm.get("norm_before_gate", False) or ssm.get("D_has_hdim", False) or ssm.get("d_ssm"):
            raise CheckpointError("config.json: norm_before_gate / D_has_hdim / d_ssm are not supported")
        n = hf_cfg["n_layer"]
        return Mamba2Config(
            vocab_size=hf_cfg["vocab_size"], hidden_size=hf_cfg["d_model"], num_layers=n,
            d_state=cls.read_per_layer(hf_cfg, ssm.get("d_state", 128), n),
            expand=ssm.get("expand", 2), headdim=ssm.get("headdim", 64), ngroups=ssm.get("ngroups", 1),
            d_conv=ssm.get("d_conv", 4), chunk_size=ssm.get("chunk_size", 256), conv_bias=ssm.get("conv_bias", True),
            bias=ssm.get("bias", False), dt_limit=tuple(ssm.get("dt_limit", (0.0, float("inf")))),
            norm_eps=hf_cfg.get("norm_epsilon", 1e-5), residual_in_fp32=hf_cfg.get("residual_in_fp32", True),
            tie_word_embeddings=hf_cfg.get("tie_embeddings", True),
            pad_vocab_multiple=hf_cfg.get("pad_vocab_size_multiple", 8),
            expanded_layers=cls.read_expanded(hf_cfg),
        )

    @classmethod
    def write_config(cls, config: Mamba2Config, base: dict | None = None) -> dict:
        hf_cfg = dict(base or {})
        ssm = dict(hf_cfg.get("ssm_cfg") or {"layer": "Mamba2"})
        values = dict(d_state=max(config.d_state), expand=config.expand, headdim=config.headdim,
                      ngroups=config.ngroups, d_conv=config.d_conv, chunk_size=config.chunk_size)
        # keys at mamba_ssm's defaults stay implicit unless the source wrote them
        ssm.update({k: v for k, v in values.items() if k in ssm or MAMBA2_DEFAULTS[k] != v})
        hf_cfg.update(d_model=config.hidden_size, d_intermediate=0, n_layer=config.num_layers,
                   vocab_size=config.vocab_size, ssm_cfg=ssm, rms_norm=True,
                   residual_in_fp32=config.residual_in_fp32, fused_add_norm=hf_cfg.get("fused_add_norm", True),
                   pad_vocab_size_multiple=config.pad_vocab_multiple, tie_embeddings=config.tie_word_embeddings)
        cls.write_statex_keys(hf_cfg, config.d_state, config.expanded_layers)
        return hf_cfg

    @classmethod
    def hf_names(cls, internal: str, config: Mamba2Config) -> list[str]:
        return [internal] if internal == "lm_head.weight" else [cls.prefix + internal]

    @classmethod
    def optional(cls, hf_name: str, config: Mamba2Config) -> bool:
        return hf_name == "lm_head.weight" and config.tie_word_embeddings

    @classmethod
    def write_weights(cls, folder: Path, config: Mamba2Config, tensors: Iterable[tuple[str, torch.Tensor]],
                      dtypes: dict[str, torch.dtype], shapes: dict[str, tuple[int, ...]],
                      progress: Optional[Callable] = None) -> None:
        """mamba_ssm's from_pretrained reads pytorch_model.bin only; torch.save needs the dict whole. A tied
        LM head is stored as a copy of the embedding, as mamba_ssm saves it."""
        sd = {}
        for name, t in tensors:
            sd[cls.hf_names(name, config)[0]] = t.to(dtypes[name]).contiguous().clone()
            if progress is not None:
                progress(name, t)
        if config.tie_word_embeddings:
            sd["lm_head.weight"] = sd["backbone.embedding.weight"]
        tmp = folder / f"{cls.weights_file}.tmp"
        torch.save(sd, tmp)
        tmp.rename(folder / cls.weights_file)
