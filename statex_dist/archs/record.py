"""What the rest of the code asks about an architecture, in one record per architecture.

Each architecture's folder (``statex_dist/archs/<name>/``) builds one :class:`Architecture` from its own
modules; the registry (``statex_dist.archs``) lists them. Generic code (the model builder, the pipeline, the
checkpoint readers and writers, the StateX plan, the size checks, the FLOP count, the tools) asks the record
of a config (``archs.of(config)``) and never the architecture's name. docs/adding-an-architecture.md says
what each field must do.

This module imports no architecture and no model stack: the types below are the records' shapes only.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import torch

    from statex_dist.checkpoint.hf_format import HFFormat
    from statex_dist.models.config import ModelConfig
    from statex_dist.parallel.sharding import ShardSpec
    from statex_dist.statex.plan import ExpansionPlan


@dataclass(frozen=True)
class Expansion:
    """StateX on this architecture: which per-layer shape grows, how, and what a plan may say.

    Attributes:
        modes: the init modes (``ExpansionPlan.init``), the paper's default first.
        option: the ``ExpansionPlan`` field that gives the expanded layers' new value of ``per_layer``; the
            run config's ``expansion.<option>`` and the tool's ``--<option>`` flag (``_`` as ``-``).
        option_help: the tool flag's help text.
        per_layer: the config field (a list, one entry per layer) the expansion changes.
        plan_options: ``(config, chosen layers, the option's value or None, gate_bias_init or None)`` ->
            the plan fields of this architecture with its defaults filled in.
        validate: ``(config, plan)`` -> None; raises ValueError for what the plan may not ask of this
            architecture (the mode and the layers are checked before it).
        expand_layer: ``(name, local, tensor, layer, old config, new config, plan)`` -> the full tensor of
            parameter ``name`` (``local``: its name after ``layers.{layer}.``) in the expanded model.
        aliases: earlier names of ``option``, accepted as the plan's keyword, the run config's key and the
            tool's flag.
        resize: ``(config, chosen layers, the option's value)`` -> the config fields the expansion sets, each
            a per-layer list, where more than ``per_layer`` changes (Gated DeltaNet's value heads); None: the
            chosen layers' entries of ``per_layer`` become the value.
    """
    modes: tuple[str, ...]
    option: str
    option_help: str
    per_layer: str
    plan_options: Callable[[ModelConfig, list[int], Optional[int], Optional[tuple[float, float]]], dict]
    validate: Callable[[ModelConfig, ExpansionPlan], None]
    expand_layer: Callable[..., torch.Tensor]
    aliases: tuple[str, ...] = ()
    resize: Optional[Callable[[ModelConfig, tuple[int, ...], int], dict]] = None

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")


@dataclass(frozen=True)
class RemoteCode:
    """The class names of an export whose layers differ in shape (statex_dist.checkpoint.remote_code)."""
    model_type: str    # ours, beside the weights with the template files
    config_class: str
    model_class: str
    stock_type: str    # the ecosystem's, for exports whose layers are all alike
    stock_class: str


@dataclass(frozen=True)
class TinyRecipe:
    """The embedded tiny model (statex_dist.tiny, tools/pretrain_tiny.py): written in the architecture's
    default export format under ``statex_dist/pretrained/tiny-<name>/``.

    Attributes:
        config: the model config's fields but ``arch`` and ``vocab_size``, which statex_dist.tiny adds (the
            vocabulary is the tiny tasks': bytes and a block of MQAR ids); ``--set`` overrides them.
        shipped_seed: the pretraining seed of the model that ships.
        init_options: the initialisation options it was pretrained from (``Architecture.init_options``).
    """
    config: dict[str, Any]
    shipped_seed: int
    init_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Architecture:
    """One architecture, as the rest of the code sees it.

    Attributes:
        label: its name in messages ("GLA").
        config_class: its model config, a dataclass deriving from ``statex_dist.models.config.ModelConfig``
            whose class attribute ``arch`` is the registry name.
        param_specs: ``(config, tp)`` -> every parameter's ShardSpec by internal name (the layout; free of
            megatron-core).
        model: ``"module:Class"`` of its ``CausalLM`` subclass, imported on first use (megatron-core).
        embedding, final_norm: the module names of the embedding and the final norm (``<name>.weight``).
        formats: the Hugging Face formats it reads, in detection order; the first is the one a model with
            no Hugging Face origin is exported in.
        remote: the class names of its remote-code exports.
        init_tensor: ``(name, full shape, config, seed, **options)`` -> the fresh fp32 tensor of a parameter.
        init_options: the keyword options ``init_tensor`` takes.
        expansion: StateX on it.
        layer_flops: ``(config, layer)`` -> forward FLOPs per token of block ``layer``
            (statex_dist.training.flops says what counts).
        kernel_ops: ``config`` -> the ops of ``statex_dist.ops`` the model calls.
        tiny: its embedded tiny model.
        tp_rule: ``(config, tp)`` -> why ``tp`` cannot work, for what a ShardSpec cannot say; None: the
            specs say it all.
    """
    label: str
    config_class: type
    param_specs: Callable[[ModelConfig, int], dict[str, ShardSpec]]
    model: str
    embedding: str
    final_norm: str
    formats: tuple[type[HFFormat], ...]
    remote: RemoteCode
    init_tensor: Callable[..., torch.Tensor]
    init_options: tuple[str, ...]
    expansion: Expansion
    layer_flops: Callable[[ModelConfig, int], int]
    kernel_ops: Callable[[ModelConfig], tuple[str, ...]]
    tiny: TinyRecipe
    tp_rule: Optional[Callable[[ModelConfig, int], Optional[str]]] = None

    @property
    def name(self) -> str:
        """The registry name: ``config.arch``, the model config's ``arch`` key, ``--arch``."""
        return self.config_class.arch

    @property
    def model_class(self) -> type:
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def default_format(self) -> type[HFFormat]:
        return self.formats[0]
