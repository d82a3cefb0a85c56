"""Every collective in the package runs on tensors that live where the backend wants them.

NCCL refuses CPU tensors, and no test here runs NCCL, so the sources are read instead: each call of a
torch.distributed collective must either sit in a function that places its tensor with
``statex_dist.parallel.state.collective_device`` or be one of the listed sites whose tensors are model
tensors (parameters, activations, gradients: already on the model's device). A new call site fails this
test until it does one or the other.
"""
import ast
from pathlib import Path

import torch

PKG = Path(__file__).resolve().parents[1] / "statex_dist"

TENSOR_COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "reduce_scatter",
    "reduce_scatter_tensor", "reduce_scatter_single", "broadcast", "reduce", "gather", "scatter", "all_to_all",
    "all_to_all_single", "send", "recv", "isend", "irecv", "batch_isend_irecv",
}
# torch moves these to the current device itself (torch.cuda.set_device is called before any group exists)
OBJECT_COLLECTIVES = {"all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                      "barrier"}

# (module, function): why its tensors are model tensors
MODEL_TENSOR_SITES = {
    ("parallel/mappings.py", "forward"): "TP activations in autograd functions",
    ("parallel/mappings.py", "backward"): "gradients of TP activations",
    ("parallel/mappings.py", "all_reduce_sum"): "TP activations (torch.distributed.nn, gradients too)",
    ("parallel/weights.py", "gather_full"): "parameters or their gradients",
    ("parallel/sequence.py", "_all_gather_t"): "activations along time (sequence parallel)",
    ("parallel/sequence.py", "_reduce_scatter_t"): "activations along time (sequence parallel)",
    ("parallel/context.py", "forward"): "a segment's final states, transitions and conv inputs (activations, CP)",
    ("parallel/context.py", "backward"): "their gradients (CP)",
}


def _collective_sites():
    """(module, enclosing function, collective name, function source) for every collective call."""
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        src = path.read_text()
        tree = ast.parse(src)
        aliases = {}  # module-level names bound to a dist collective (e.g. _all_gather_single)
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                names = {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)} | {
                    n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                hit = names & TENSOR_COLLECTIVES
                if hit:
                    aliases[node.targets[0].id] = sorted(hit)[0]
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                f = call.func
                # torch.distributed as ``dist``, torch.distributed.nn.functional (autograd collectives) as ``dist_nn``
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("dist", "dist_nn"):
                    name = f.attr
                elif isinstance(f, ast.Name) and f.id in aliases:
                    name = aliases[f.id]
                else:
                    continue
                yield rel, fn.name, name, ast.get_source_segment(src, fn)


def test_every_collective_places_its_tensors():
    sites = list(_collective_sites())
    assert len(sites) >= 8, sites  # the scan finds the package's collectives at all
    bad = []
    for rel, fn, name, body in sites:
        if name in OBJECT_COLLECTIVES or name not in TENSOR_COLLECTIVES:
            continue
        if (rel, fn) in MODEL_TENSOR_SITES or "collective_device(" in body:
            continue
        bad.append(f"{rel}:{fn} calls dist.{name} on a tensor that is neither a model tensor nor placed with "
                   f"collective_device()")
    assert not bad, "\n".join(bad)


def test_listed_model_tensor_sites_still_exist():
    found = {(rel, fn) for rel, fn, name, _ in _collective_sites() if name in TENSOR_COLLECTIVES}
    assert set(MODEL_TENSOR_SITES) <= found, set(MODEL_TENSOR_SITES) - found


def test_grid_check_builds_its_flag_with_the_helper():
    # the crash that stopped every pipeline-parallel run on NCCL: a CPU flag tensor all-reduced
    body = next(b for rel, fn, _, b in _collective_sites() if fn == "check_grid_agrees")
    assert "device=collective_device()" in body


def test_collective_device_under_gloo_is_the_cpu():
    from statex_dist.parallel import state
    state.ensure_initialized()
    assert state.collective_device() == torch.device("cpu")
    assert state.collective_device(state.tp_group()) == torch.device("cpu")
