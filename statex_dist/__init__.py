"""statex-dist: distributed post-training with state expansion (StateX) for recurrent LMs (GLA, Gated DeltaNet,
Mamba2)."""
import warnings

# megatron-core warns at import that its optional fused kernels (Transformer Engine, Apex) are absent;
# the models here use none of them.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def load_model(path, dtype=None):
    """See :func:`statex_dist.api.load_model` (imported lazily: megatron-core and DeepSpeed are heavy)."""
    import torch
    from statex_dist.api import load_model as _load
    return _load(path, dtype=dtype or torch.float32)


__all__ = ["load_model"]
