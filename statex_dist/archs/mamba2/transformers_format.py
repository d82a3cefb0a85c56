"""transformers' Mamba2 checkpoints (Mamba2ForCausalLM): Mamba2Config names, ``backbone.embeddings``."""
from __future__ import annotations

from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_format import HFFormat, json_float, json_safe_float


class TransformersMamba2(HFFormat):
    name, arch, prefix = "transformers-mamba2", "mamba2", "backbone."
    description = "transformers Mamba2 (model_type 'mamba2')"
    per_layer_key = "statex_d_state"

    @classmethod
    def matches(cls, hf_cfg: dict) -> bool:
        return hf_cfg.get("model_type") in ("mamba2", "statex_mamba2")  # statex_mamba2: d_state per layer

    @classmethod
    def read_config(cls, hf_cfg: dict) -> Mamba2Config:
        if hf_cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"config.json: hidden_act={hf_cfg['hidden_act']!r} is not supported (needs 'silu')")
        if hf_cfg.get("use_bias", False):
            raise CheckpointError("config.json: use_bias=true (biased in_proj/out_proj) is not supported")
        n, hidden, expand = hf_cfg["num_hidden_layers"], hf_cfg["hidden_size"], hf_cfg.get("expand", 2)
        headdim = hf_cfg.get("head_dim", 64)
        if hf_cfg.get("num_heads") is not None and hf_cfg["num_heads"] * headdim != expand * hidden:
            raise CheckpointError(
                f"config.json: num_heads {hf_cfg['num_heads']} x head_dim {headdim} != expand {expand} x hidden_size "
                f"{hidden}")
        limit = hf_cfg.get("time_step_limit", (0.0, float("inf")))
        return Mamba2Config(
            vocab_size=hf_cfg["vocab_size"], hidden_size=hidden, num_layers=n,
            d_state=cls.read_per_layer(hf_cfg, hf_cfg.get("state_size", 128), n),
            expand=expand, headdim=headdim, ngroups=hf_cfg.get("n_groups", 1), d_conv=hf_cfg.get("conv_kernel", 4),
            chunk_size=hf_cfg.get("chunk_size", 256), conv_bias=hf_cfg.get("use_conv_bias", True),
            dt_limit=tuple(json_float(x) for x in limit), norm_eps=hf_cfg.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=hf_cfg.get("residual_in_fp32", True),
            tie_word_embeddings=hf_cfg.get("tie_word_embeddings", False),
            # remote-code exports of mamba_ssm sources keep the real vocab and the embedding's padding
            pad_vocab_multiple=(hf_cfg.get("pad_vocab_size_multiple", 1)
                                if hf_cfg.get("model_type") == "statex_mamba2" else 1),
            expanded_layers=cls.read_expanded(hf_cfg),
        )

    @classmethod
    def write_config(cls, config: Mamba2Config, base: dict | None = None) -> dict:
        hf_cfg = dict(base or {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2"})
        hf_cfg.update(vocab_size=config.checkpoint_vocab_size(), hidden_size=config.hidden_size,
                   num_hidden_layers=config.num_layers, state_size=max(config.d_state), expand=config.expand,
                   head_dim=config.headdim, num_heads=config.nheads, n_groups=config.ngroups,
                   conv_kernel=config.d_conv, chunk_size=config.chunk_size, use_conv_bias=config.conv_bias,
                   use_bias=False, layer_norm_epsilon=config.norm_eps, residual_in_fp32=config.residual_in_fp32,
                   time_step_limit=[json_safe_float(x) for x in config.dt_limit],
                   tie_word_embeddings=config.tie_word_embeddings)
        if hf_cfg.get("model_type") == "statex_mamba2":
            hf_cfg.pop("pad_vocab_size_multiple", None)  # ours; rewritten below when it still applies
        if cls.write_statex_keys(hf_cfg, config.d_state, config.expanded_layers) and config.pad_vocab_multiple > 1:
            # read by the remote code only (see remote_code)
            hf_cfg.update(vocab_size=config.vocab_size, pad_vocab_size_multiple=config.pad_vocab_multiple)
        return hf_cfg

    @classmethod
    def hf_names(cls, internal: str, config: Mamba2Config) -> list[str]:
        if internal == "lm_head.weight":
            return [internal]
        if internal == "embedding.weight":
            return ["backbone.embeddings.weight", "backbone.embedding.weight"]
        return [cls.prefix + internal]

    @classmethod
    def optional(cls, hf_name: str, config: Mamba2Config) -> bool:
        return hf_name == "lm_head.weight" and config.tie_word_embeddings
