"""StateX expansion as functions on configs and per-tensor transforms.

``plan = ExpansionPlan(choose_layers(n, every=6), ...)``, ``new = expand_config(old, plan)``, then every
parameter goes through ``expand_tensor(name, tensor, old, new, plan)`` independently.
"""
from statex_dist.statex.expand import expand_tensor, expand_tensors
from statex_dist.statex.layers import choose_layers
from statex_dist.statex.plan import ExpansionPlan, expand_config, validate
from statex_dist.statex.report import count_params, state_floats, summary

__all__ = ["ExpansionPlan", "choose_layers", "count_params", "expand_config", "expand_tensor",
           "expand_tensors", "state_floats", "summary", "validate"]
