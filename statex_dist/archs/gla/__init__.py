"""Gated linear attention (fla's GLA), heads chosen per layer; StateX merges a layer's heads.

config.py (GLAConfig), layout.py (every parameter's ShardSpec), model.py (the TP model, megatron-core),
fla_format.py (fla's Hugging Face folders), init.py (fla's initialisation), expansion.py (StateX),
flops.py, tiny.py (the embedded tiny model).
"""
from statex_dist.archs.gla import expansion, flops, init, layout
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.gla.fla_format import FlaGLA
from statex_dist.archs.gla.tiny import TINY
from statex_dist.archs.record import Architecture, RemoteCode


def kernel_ops(config: GLAConfig) -> tuple[str, ...]:
    return ("gla", "conv1d") if config.use_short_conv else ("gla",)


ARCH = Architecture(
    label="GLA",
    config_class=GLAConfig,
    param_specs=layout.param_specs,
    model="statex_dist.archs.gla.model:GLAForCausalLM",
    embedding=layout.EMBEDDING,
    final_norm=layout.NORM,
    formats=(FlaGLA,),
    remote=RemoteCode("statex_gla", "StateXGLAConfig", "StateXGLAForCausalLM", "gla", "GLAForCausalLM"),
    init_tensor=init.init_tensor,
    init_options=init.OPTIONS,
    expansion=expansion.EXPANSION,
    layer_flops=flops.layer_flops,
    kernel_ops=kernel_ops,
    tiny=TINY,
)
