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
