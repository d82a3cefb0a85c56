"""Writing a Hugging Face folder in a source's own format (fla GLA, mamba_ssm, transformers Mamba2): its
config.json here, its weights file by the format (``HFFormat.write_weights``).

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
from statex_dist.checkpoint.remote_code import needs_remote_code, set_model_type, write_templates
from statex_dist.checkpoint.tensor_files import write_json
from statex_dist.models import specs_for
from statex_dist.models.config import ModelConfig


def write_hf(folder: Path, fmt: type[HFFormat], config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]],
             dtypes: dict[str, torch.dtype], base_config: Optional[dict] = None, progress=None) -> None:
    """Stream full tensors (internal names, checkpoint shapes, ``specs_for`` order) into ``folder``."""
    specs = specs_for(config, 1)
    names = list(specs)
    if needs_remote_code(config) and fmt.remote_code_format is not None:   # the one layout the remote code reads
        fmt, base_config = fmt.remote_code_format, None
    hf_cfg = fmt.write_config(config, base_config)
    hf_cfg["torch_dtype" if "torch_dtype" in hf_cfg else "dtype"] = str(dtypes[names[0]]).replace("torch.", "")
    if set_model_type(hf_cfg, config):
        write_templates(folder)
    write_json(hf_cfg, folder / "config.json")
    fmt.write_weights(folder, config, tensors, dtypes, {n: s.checkpoint_shape for n, s in specs.items()}, progress)
