"""Writing a Hugging Face folder in a source's own format (fla GLA, mamba_ssm, transformers Mamba2).

A model whose layers are all alike loads in the ecosystem's stock classes. One whose heads / d_state
differ per layer records them in config.json (``statex_*`` keys), gets model_type ``statex_gla`` /
``statex_mamba2`` and the modeling code of ``statex_dist.checkpoint.remote_code`` beside its weights
(``AutoModelForCausalLM`` with ``trust_remote_code=True``), and loads through ``load_model`` as well.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch

from statex_dist.checkpoint.hf_format import HFFormat
from statex_dist.checkpoint.mamba_ssm_format import MambaSSM
from statex_dist.checkpoint.remote_code import needs_remote_code, set_model_type, write_templates
from statex_dist.checkpoint.stream_writer import StreamingSafetensorsWriter
from statex_dist.checkpoint.tensor_files import write_json
from statex_dist.checkpoint.transformers_mamba2 import TransformersMamba2
from statex_dist.models.config import ModelConfig
from statex_dist.models import specs_for


def write_hf(folder: Path, fmt: type[HFFormat], config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]],
             dtypes: dict[str, torch.dtype], base_config: Optional[dict] = None, progress=None) -> None:
    """Stream full tensors (internal names, checkpoint shapes, ``specs_for`` order) into ``folder``."""
    from statex_dist.checkpoint.hf_load import checkpoint_shape
    names = list(specs_for(config, 1))
    if fmt is MambaSSM and needs_remote_code(config):
        # the remote code reads one Mamba2 layout: transformers' (a mamba_ssm config.json shares no keys)
        fmt, base_config = TransformersMamba2, None
    cfg = fmt.write_config(config, base_config)
    cfg["torch_dtype" if "torch_dtype" in cfg else "dtype"] = str(dtypes[names[0]]).replace("torch.", "")
    if set_model_type(cfg, config):
        write_templates(folder)
    write_json(cfg, folder / "config.json")
    if fmt is MambaSSM:
        # mamba_ssm's from_pretrained reads pytorch_model.bin only; torch.save needs the dict whole.
        sd = {}
        for name, t in tensors:
            sd[fmt.hf_names(name, config)[0]] = t.to(dtypes[name]).contiguous().clone()
            if progress is not None:
                progress(name, t)
        if config.tie_word_embeddings:
            sd["lm_head.weight"] = sd["backbone.embedding.weight"]
        tmp = folder / "pytorch_model.bin.tmp"
        torch.save(sd, tmp)
        tmp.rename(folder / "pytorch_model.bin")
        return
    entries = [(fmt.hf_names(n, config)[0], dtypes[n], checkpoint_shape(config, n)) for n in names]
    writer = StreamingSafetensorsWriter(folder / "model.safetensors", entries, {"format": "pt"})
    try:
        for name, t in tensors:
            writer.write(fmt.hf_names(name, config)[0], t.to(dtypes[name]))
            if progress is not None:
                progress(name, t)
        writer.close()
    except BaseException:
        writer.abort()
        raise
