"""Mamba2 (mamba_ssm's MambaLMHeadModel with Mamba2 mixers, no MLP), d_state chosen per layer; StateX grows
a layer's d_state.

config.py (Mamba2Config), layout.py (every parameter's ShardSpec and the TP rule the specs cannot say),
model.py (the TP model, megatron-core), transformers_format.py and mamba_ssm_format.py (the Hugging Face
folders of transformers and mamba_ssm), init.py (mamba_ssm's initialisation), expansion.py (StateX),
flops.py, tiny.py (the embedded tiny model).
"""
from statex_dist.archs.mamba2 import expansion, flops, init, layout
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.archs.mamba2.mamba_ssm_format import MambaSSM
from statex_dist.archs.mamba2.tiny import TINY
from statex_dist.archs.mamba2.transformers_format import TransformersMamba2
from statex_dist.archs.record import Architecture, RemoteCode


def kernel_ops(config: Mamba2Config) -> tuple[str, ...]:
    return ("ssd", "conv1d")


ARCH = Architecture(
    label="Mamba2",
    config_class=Mamba2Config,
    param_specs=layout.param_specs,
    model="statex_dist.archs.mamba2.model:Mamba2ForCausalLM",
    embedding=layout.EMBEDDING,
    final_norm=layout.NORM,
    formats=(TransformersMamba2, MambaSSM),
    remote=RemoteCode("statex_mamba2", "StateXMamba2Config", "StateXMamba2ForCausalLM", "mamba2",
                      "Mamba2ForCausalLM"),
    init_tensor=init.init_tensor,
    init_options=init.OPTIONS,
    expansion=expansion.EXPANSION,
    layer_flops=flops.layer_flops,
    kernel_ops=kernel_ops,
    tiny=TINY,
    tp_rule=layout.tp_rule,
)
