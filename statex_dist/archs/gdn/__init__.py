"""Gated DeltaNet (fla's GatedDeltaNet), heads chosen per layer; StateX merges a layer's heads.

config.py (GDNConfig), layout.py (every parameter's ShardSpec), model.py (the TP model, megatron-core),
fla_format.py (fla's Hugging Face folders), init.py (fla's initialisation), expansion.py (StateX),
flops.py, tiny.py (the embedded tiny model).
"""
from statex_dist.archs.gdn import expansion, flops, init, layout
from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gdn.fla_format import FlaGatedDeltaNet
from statex_dist.archs.gdn.tiny import TINY
from statex_dist.archs.record import Architecture, RemoteCode


def kernel_ops(config: GDNConfig) -> tuple[str, ...]:
    return ("gdn", "conv1d") if config.use_short_conv else ("gdn",)


ARCH = Architecture(
    label="Gated DeltaNet",
    config_class=GDNConfig,
    param_specs=layout.param_specs,
    model="statex_dist.archs.gdn.model:GDNForCausalLM",
    embedding=layout.EMBEDDING,
    final_norm=layout.NORM,
    formats=(FlaGatedDeltaNet,),
    remote=RemoteCode("statex_gated_deltanet", "StateXGatedDeltaNetConfig", "StateXGatedDeltaNetForCausalLM",
                      "gated_deltanet", "GatedDeltaNetForCausalLM"),
    init_tensor=init.init_tensor,
    init_options=init.OPTIONS,
    expansion=expansion.EXPANSION,
    layer_flops=flops.layer_flops,
    kernel_ops=kernel_ops,
    tiny=TINY,
)
