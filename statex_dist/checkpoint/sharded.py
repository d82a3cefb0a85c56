"""This project's sharded checkpoint: one safetensors file per (TP rank, pipeline stage).

    DST/manifest.json          format, config (per-layer shapes), tp, pp, stages, weight_map, the source's
                               Hugging Face format and config.json (for export back), files with digests
    DST/weights/tp00-pp00.safetensors ...   each rank's TP slice (ShardSpec.shard) of its stage's tensors

Tensors are stored at their TP-padded shape under the models' internal names, so a rank of the same
layout loads its file as is; another layout reads every slice of a tensor and re-slices it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn as nn

from statex_dist import archs
from statex_dist.checkpoint.atomic import MANIFEST, verify_manifest, write_manifest
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.stream_writer import StreamingSafetensorsWriter
from statex_dist.checkpoint.tensor_files import SafetensorsFile
from statex_dist.models import specs_for
from statex_dist.models.config import ModelConfig, config_from_dict
from statex_dist.parallel.sharding import ShardSpec

FORMAT = "statex-sharded"


def is_sharded(folder: Path) -> bool:
    p = Path(folder) / MANIFEST
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except json.JSONDecodeError:
        return True  # ours but damaged: ShardedCheckpoint reports it


def stage_of_layers(config: ModelConfig, pp: int, tp: int = 1) -> list[list[int]]:
    """The layers of each pipeline stage: DeepSpeed's own partition of the pipeline's pieces
    (``PipelineModule(partition_method="parameters")``, ``statex_dist.models.pipeline.layer_specs``).

    DeepSpeed weighs every piece by the trainable parameters it builds on a rank: the embedding, each
    block, the final norm, and the LM head, which for tied embeddings is the embedding again, counted in
    full at both ends. The counts here are the same, from the ShardSpecs' local shapes at ``tp``, and the
    split is DeepSpeed's ``partition_balanced`` (imported here, not at module top: the checkpoint tools
    start without DeepSpeed and need it only for PP > 1). A stage may hold no block (a large vocabulary on
    few layers), as it does in the engine.
    """
    if pp > config.num_layers:
        raise CheckpointError(f"PP={pp} is larger than the {config.num_layers} layers; use PP <= {config.num_layers}")
    if pp == 1:
        return [list(range(config.num_layers))]
    from deepspeed.runtime.utils import partition_balanced
    specs = specs_for(config, tp)
    arch = archs.of(config)
    count = {name: int(torch.Size(s.local_shape(tp)).numel()) for name, s in specs.items()}
    per_layer = [0] * config.num_layers
    for name, s in specs.items():
        if s.layer is not None:
            per_layer[s.layer] += count[name]
    embedding = f"{arch.embedding}.weight"
    weights = ([count[embedding]] + per_layer + [count[f"{arch.final_norm}.weight"]]
               + [count[embedding if config.tie_word_embeddings else "lm_head.weight"]])
    parts = partition_balanced(weights=weights, num_parts=pp)
    return [[i - 1 for i in range(parts[s], parts[s + 1]) if 1 <= i <= config.num_layers] for s in range(pp)]


def stage_of(spec: ShardSpec, stages: list[list[int]], name: str, embedding: str) -> int:
    """The pipeline stage that holds parameter ``name``: its layer's, the first for the embedding
    (``embedding``: its parameter name), else the last."""
    if spec.layer is not None:
        return next(s for s, layers in enumerate(stages) if spec.layer in layers)
    if name == embedding:
        return 0
    return len(stages) - 1


def shard_file(tp_rank: int, stage: int) -> str:
    return f"weights/tp{tp_rank:02d}-pp{stage:02d}.safetensors"


def write_sharded(folder: Path, config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]],
                  dtypes: dict[str, torch.dtype], tp: int, pp: int, hf: Optional[dict] = None,
                  extra: Optional[dict] = None, progress=None) -> dict:
    """Stream full tensors (checkpoint shape, in ``specs_for`` order) into ``folder`` as TP x PP shards.

    Only one full tensor and its slices are in memory at a time. Returns the manifest written.
    """
    specs = specs_for(config, tp)
    stages = stage_of_layers(config, pp, tp)
    embedding = f"{archs.of(config).embedding}.weight"
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    entries: dict[tuple[int, int], list] = {}
    where = {}
    for name, spec in specs.items():
        s = stage_of(spec, stages, name, embedding)
        where[name] = s
        for r in range(tp):
            entries.setdefault((r, s), []).append((name, dtypes[name], spec.local_shape(tp)))
    writers = {key: StreamingSafetensorsWriter(folder / shard_file(*key), ent, {"format": FORMAT})
               for key, ent in entries.items()}
    try:
        for name, full in tensors:
            spec = specs[name]
            full = full.to(dtypes[name])
            full = spec.pad_rows(full)
            for r in range(tp):
                # split along dim 0: stream the pieces, the file bytes are their concatenation
                piece = spec.shard_pieces(full, r, tp, name) if spec.dim in (0, None) else spec.shard(full, r, tp, name)
                writers[(r, where[name])].write(name, piece)
            if progress is not None:
                progress(name, full)
        known = {shard_file(*key): w.close() for key, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    body = manifest_body(config, tp, pp, stages, {n: where[n] for n in specs}, hf, extra)
    return write_manifest(folder, body, known)


def manifest_body(config: ModelConfig, tp: int, pp: int, stages: list[list[int]], weight_map: dict[str, int],
                  hf: Optional[dict] = None, extra: Optional[dict] = None) -> dict:
    """The manifest of a sharded checkpoint, less its files (``atomic.write_manifest`` adds them)."""
    return {"format": FORMAT, "version": 1, "config": config.to_dict(), "tp": tp, "pp": pp, "stages": stages,
            "weight_map": weight_map, "hf": hf or {}, **(extra or {})}


class ShardedCheckpoint:
    """Read a sharded checkpoint: full tensors (any consumer) or one rank's slice (any TP layout)."""

    def __init__(self, folder: str | os.PathLike, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = verify_manifest(self.folder, deep=verify)
        if self.manifest.get("format") != FORMAT:
            raise CheckpointError(f"{self.folder / MANIFEST}: not a {FORMAT} manifest")
        try:
            self.config = config_from_dict(self.manifest["config"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{self.folder / MANIFEST}: bad config ({e})") from e
        self.tp, self.pp = self.manifest["tp"], self.manifest["pp"]
        self.specs = specs_for(self.config, self.tp)
        self._handles = {}
        hf = self.manifest.get("hf") or {}
        self.hf_config, self.hf_format_name = hf.get("config"), hf.get("format")

    def _file(self, name: str, rank: int):
        if name not in self.manifest["weight_map"]:
            raise CheckpointError(f"{self.folder / MANIFEST}: no tensor {name!r} in the weight map")
        path = self.folder / shard_file(rank, self.manifest["weight_map"][name])
        if path not in self._handles:
            self._handles[path] = SafetensorsFile(path)
        return self._handles[path], path

    def names(self) -> list[str]:
        return list(self.specs)

    def dtype(self, name: str) -> torch.dtype:
        return self.local(name, 0).dtype

    def local(self, name: str, rank: int) -> torch.Tensor:
        """The stored slice of TP rank ``rank`` (of this checkpoint's TP size)."""
        h, path = self._file(name, rank)
        t = h.get(name)
        want = self.specs[name].local_shape(self.tp)
        if tuple(t.shape) != tuple(want):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {list(t.shape)}, expected {list(want)}")
        return t

    def padded(self, name: str) -> torch.Tensor:
        """The full tensor at this checkpoint's TP-padded shape."""
        return self.specs[name].unshard([self.local(name, r) for r in range(self.tp)], name)

    def get(self, name: str) -> torch.Tensor:
        """The full tensor at its checkpoint shape (TP padding of the vocab removed)."""
        return self.specs[name].unpad_rows(self.padded(name))

    def load_into(self, model: nn.Module, tp_rank: int, tp: int, specs: Optional[dict] = None) -> None:
        """Copy this rank's slices into ``model`` (built for ``tp``); any stored TP size works. ``specs``:
        ``specs_for(self.config, tp)`` when the caller already has them (a caller loading tensor by tensor)."""
        specs = specs if specs is not None else specs_for(self.config, tp)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if tp == self.tp:
                    p.copy_(self.local(name, tp_rank))
                    continue
                spec = specs[name]
                p.copy_(spec.shard(spec.pad_rows(self.get(name)), tp_rank, tp, name))
