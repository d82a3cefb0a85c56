"""The layouts are the one source of the split rules: every parameter the models build, on every TP rank, has
the local shape and TP attributes its ShardSpec gives (``archs/<name>/layout.py``), at TP 1, 2 and 4 for every
architecture: head-sharded and value-sharded GLA and Gated DeltaNet layers (a value-sharded 1-head layer
whose key dim TP does not divide: q and k are replicated there), Mamba2 with ngroups < TP and ngroups = TP, per-layer d_state,
tied and untied heads; the one-module models and the pipeline stages alike.

Attributes checked: ``tensor_model_parallel`` (megatron-core's: True exactly for tensors split over TP),
``partition_dim`` (megatron-core's layers: the spec's dim) and ``shard_spec`` (this project's layers: the spec
itself, which the TP gradient reduction reads).
"""
from __future__ import annotations

import pytest

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.mamba2.config import Mamba2Config
from tests.dist_utils import run_workers

CONFIGS = {
    # heads [4, 1, 2, 1]: head-sharded at TP 2; at TP 4 the 1- and 2-head layers are value-sharded
    "gla": GLAConfig(vocab_size=101, hidden_size=64, num_layers=4, num_heads=[4, 1, 2, 1], use_short_conv=True,
                     tie_word_embeddings=False),
    # key dim 12 (expand_k 0.375): TP 4 does not divide it, and need not (1-head layers, q/k replicated)
    "gla-value": GLAConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=[1, 1], expand_k=0.375,
                           intermediate_size=64, tie_word_embeddings=True),
    # a vocabulary large against its blocks: DeepSpeed gives the first and last stages no block at PP 4
    "gla-tied": GLAConfig(vocab_size=1000, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                          tie_word_embeddings=True),
    "mamba2-g1": Mamba2Config(vocab_size=101, hidden_size=64, num_layers=2, d_state=[16, 32], headdim=16,
                              ngroups=1, chunk_size=8, tie_word_embeddings=True),
    # Gated DeltaNet: key / value heads [4/8, 1/1, 2/4, 1/1]: by heads at TP 2 (layers 0, 2); at TP 4 only
    # layer 0, the grouped 2/4 layer value-sharded
    "gdn": GDNConfig(vocab_size=101, hidden_size=64, num_layers=4, num_heads=[4, 1, 2, 1], num_v_heads=[8, 1, 4, 1],
                     key_dim=64, value_dim=64, tie_word_embeddings=False),
    # key dim 12: TP 4 does not divide it, and need not (1-head layers: q, k, a, b replicated); no gate, no convs
    "gdn-value": GDNConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=[1, 1], key_dim=12, value_dim=32,
                           intermediate_size=64, use_gate=False, use_short_conv=False, tie_word_embeddings=True),
    "mamba2-g4": Mamba2Config(vocab_size=100, hidden_size=64, num_layers=2, d_state=[8, 24], headdim=16,
                              ngroups=4, chunk_size=8, tie_word_embeddings=False),
}


def _check(named, specs, tp) -> list[str]:
    bad = []
    for name, p in named:
        spec = specs[name]
        if tuple(getattr(p, "ds_shape", p.shape)) != spec.local_shape(tp):
            bad.append(f"{name}: shape {tuple(p.shape)}, spec {spec.local_shape(tp)}")
        if bool(getattr(p, "tensor_model_parallel", False)) != (spec.dim is not None):
            bad.append(f"{name}: tensor_model_parallel {getattr(p, 'tensor_model_parallel', None)}, "
                       f"spec dim {spec.dim}")
        if getattr(p, "tensor_model_parallel", False) and hasattr(p, "partition_dim") and p.partition_dim != spec.dim:
            bad.append(f"{name}: partition_dim {p.partition_dim}, spec dim {spec.dim}")
        if hasattr(p, "shard_spec") and p.shard_spec != spec:
            bad.append(f"{name}: shard_spec {p.shard_spec}, spec {spec}")
    return bad


def _worker(rank, world, keys, pp):
    """For each config in turn on this rank: problems found, parameters held, parameters specified."""
    import torch

    from megatron.core import parallel_state as ps

    from statex_dist.models import build_model, specs_for
    from statex_dist.models.names import named_internal_parameters
    from statex_dist.models.pipeline import pipeline_module
    from statex_dist.parallel import state
    tp, out = world // pp, {}
    state.initialize(tp, pp)
    try:
        for key in keys:
            cfg = CONFIGS[key]
            model = build_model(cfg, init=False) if pp == 1 else pipeline_module(cfg, torch.float32, tp, pp)
            named = list(named_internal_parameters(model))
            specs = specs_for(cfg, tp)
            out[key] = {"bad": _check(named, specs, tp), "held": sorted(n for n, _ in named), "all": sorted(specs),
                        "stage": ps.get_pipeline_model_parallel_rank(),
                        "layers": sorted({specs[n].layer for n, _ in named if specs[n].layer is not None})}
    finally:
        state.destroy()
    return out


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_built_parameters_equal_their_specs(tmp_path, tp):
    for r in run_workers(_worker, tp, list(CONFIGS), 1, tmp_path=tmp_path, timeout=300):
        for key, res in r.items():
            assert not res["bad"], (key, res["bad"])
            assert res["held"] == res["all"], key     # one module: every spec'd parameter, nothing else


@pytest.mark.parametrize("tp, pp, keys", [(1, 4, ["gla", "gla-tied"]), (2, 2, ["gla-tied", "mamba2-g4"])])
def test_sharded_stages_equal_deepspeeds_partition(tmp_path, tp, pp, keys):
    """The sharded format's stage of every layer (``checkpoint.sharded.stage_of_layers``) is the stage
    DeepSpeed's ``PipelineModule`` builds it on, for tied embeddings (counted in full at both ends, as
    DeepSpeed counts a ``TiedLayerSpec``) and untied ones, at PP 4 and at TP 2 x PP 2 (local counts)."""
    from statex_dist.checkpoint.sharded import stage_of_layers
    results = run_workers(_worker, tp * pp, keys, pp, tmp_path=tmp_path, timeout=300)
    for key in keys:
        ours = stage_of_layers(CONFIGS[key], pp, tp)
        for rank, r in enumerate(results):
            assert r[key]["layers"] == ours[r[key]["stage"]], (key, rank, r[key]["stage"], ours)


def test_pipeline_stages_equal_their_specs(tmp_path):
    """TP 2 x PP 2: each stage's parameters (under the model's names) match the specs; together, all of them."""
    results = run_workers(_worker, 4, ["gla", "mamba2-g1", "gdn"], 2, tmp_path=tmp_path, timeout=300)
    for key in ("gla", "mamba2-g1", "gdn"):
        held = set()
        for r in results:
            assert not r[key]["bad"], (key, r[key]["bad"])
            held |= set(r[key]["held"])
        assert held == set(results[0][key]["all"]), key


def test_factory_builds_the_layer_its_spec_names():
    """``parallel.factory.linear``: the spec alone picks the layer (the table in its docstring), and a
    time-sliced input is refused where the layer would read it whole."""
    from megatron.core import tensor_parallel as mtp

    from statex_dist.parallel import layers, state
    from statex_dist.parallel.factory import linear
    from statex_dist.parallel.sharding import ShardSpec
    mp_cfg = state.megatron_config()
    built = {kind: type(linear(ShardSpec((8, 4), **kw), mp_cfg)) for kind, kw in {
        "replicated": {}, "column": dict(dim=0), "row": dict(dim=1),
        "packed-column": dict(dim=0, parts=(4, 4)), "packed-row": dict(dim=1, parts=(2, 2))}.items()}
    assert built == {"replicated": layers.ReplicatedLinear, "column": mtp.ColumnParallelLinear,
                     "row": mtp.RowParallelLinear, "packed-column": layers.PackedColumnParallelLinear,
                     "packed-row": layers.PackedRowParallelLinear}
    with pytest.raises(ValueError, match="column-parallel layer reads the gathered input"):
        linear(ShardSpec((8, 4), dim=0), mp_cfg, sequence_parallel=True)
