"""The architecture registry: one record per architecture, asked by name or by config, importable without the
model stack; and no module outside an architecture's folder asks for an architecture by its name."""
import dataclasses
import re
import subprocess
import sys

import pytest

from statex_dist import archs
from statex_dist.models.config import ModelConfig, config_from_dict
from statex_dist.statex import ExpansionPlan
from tests.train_helpers import ROOT


def test_records_and_lookup():
    assert {"gla", "mamba2"} <= set(archs.ARCHS) and archs.DEFAULT in archs.ARCHS
    for name, arch in archs.ARCHS.items():
        assert arch.name == name and issubclass(arch.config_class, ModelConfig)
        assert archs.get(name) is arch
        assert all(f.arch == name for f in arch.formats)
        assert arch.expansion.option in {f.name for f in dataclasses.fields(ExpansionPlan)}
        config = config_from_dict({"arch": name, "vocab_size": 50, **arch.tiny.config})
        assert archs.of(config) is arch
        vocab = {n for n, s in arch.param_specs(config, 1).items() if s.vocab_rows is not None}
        assert vocab == {f"{arch.embedding}.weight"} | (set() if config.tie_word_embeddings else {"lm_head.weight"})
    assert archs.FORMATS == tuple(f for a in archs.ARCHS.values() for f in a.formats)
    with pytest.raises(ValueError, match=r"unknown architecture 'llama': expected '") as e:
        archs.get("llama")
    assert all(repr(n) in str(e.value) for n in archs.ARCHS)


def test_registry_imports_without_the_model_stack():
    code = ("import sys, statex_dist.archs, statex_dist.checkpoint.sources, statex_dist.reshard; "
            "print([m for m in ('megatron', 'deepspeed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# a comparison with an architecture's name, the name as a literal (a dict key, a default), an isinstance check
# on a config class
NAMES = "|".join(archs.ARCHS)
CLASSES = "|".join(a.config_class.__name__ for a in archs.ARCHS.values())
ASKS_BY_NAME = re.compile(rf"arch ==|arch !=|[\"']({NAMES})[\"']|isinstance\([^)]*({CLASSES})\)")


EXEMPT = (
    "statex_dist/archs/",
    # copied into exports, where it runs without this package
    "statex_dist/checkpoint/remote_code/modeling_statex.py", "statex_dist/checkpoint/remote_code/configuration_statex.py",
    # keyed by kernel op, named after the scan it runs (op "gla": fla's chunked GLA scan)
    "statex_dist/ops/",
)


def test_only_the_architectures_ask_by_name():
    """Generic code asks the registry (archs.of / archs.get) what an architecture does."""
    found = []
    for path in sorted((ROOT / "statex_dist").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(EXEMPT):
            continue
        found += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if ASKS_BY_NAME.search(line)]
    assert not found, found


def _package(module: str) -> str:
    """The node of ``module`` in the package graph: its top-level package under statex_dist, an architecture's
    folder counted apart from the registry (``archs.gla``)."""
    parts = module.split(".")[1:] or ["(statex_dist)"]
    if parts[0] == "archs" and len(parts) > 1 and parts[1] in archs.NAMES:
        return "archs." + parts[1]
    return parts[0]


def _top_level_imports(path, module: str) -> set[str]:
    """The statex_dist modules ``path`` imports when it is imported (not inside functions, not for type
    hints)."""
    import ast
    tree, out = ast.parse(path.read_text()), set()
    body = list(tree.body)
    for node in list(body):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") != "TYPE_CHECKING":
            body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = module.split(".")[:len(module.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + [node.module])
            out |= {base + "." + a.name if (ROOT / (base + "." + a.name).replace(".", "/")).is_dir()
                    or (ROOT / ((base + "." + a.name).replace(".", "/") + ".py")).exists() else base
                    for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("statex_dist")}


def test_packages_import_in_one_direction():
    """No cycle between packages (docs/adding-an-architecture.md, "The import graph"): an architecture's folder
    builds on the generic packages, which reach it only through the registry's lookup."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "statex_dist").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if "remote_code" in rel.parts:
            continue
        src = _package(module)
        graph.setdefault(src, set()).update(d for d in map(_package, _top_level_imports(path, module)) if d != src)

    def cycle_from(start, node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None
    cycles = [c for c in (cycle_from(p, p, [p]) for p in sorted(graph)) if c]
    assert not cycles, f"import cycles between packages: {cycles}; graph: {graph}"
    assert "archs" not in graph or graph["archs"] <= {"(statex_dist)"}, graph["archs"]   # the registry is a leaf
    assert {"models", "checkpoint", "statex"} <= graph["archs.gla"]
