"""Bad checkpoint folders fail with a CheckpointError naming the file, the tensor and what was expected."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from statex_dist import load_model
from statex_dist.checkpoint import CheckpointError
from tests.fla_reference import make_fla_gla


@pytest.fixture
def gla_dir(tmp_path):
    make_fla_gla(tmp_path / "gla")
    return tmp_path / "gla"


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no config\.json"):
        load_model(tmp_path / "empty")


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        load_model(tmp_path / "nothing-here")


def test_unknown_architecture(gla_dir):
    cfg = json.loads((gla_dir / "config.json").read_text())
    cfg["model_type"] = "llama"
    (gla_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown architecture \(model_type='llama'"):
        load_model(gla_dir)


def test_unsupported_option(gla_dir):
    cfg = json.loads((gla_dir / "config.json").read_text())
    cfg["num_kv_heads"] = 2
    (gla_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_kv_heads=2 is not supported"):
        load_model(gla_dir)


def test_missing_tensor(gla_dir):
    f = gla_dir / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.attn.k_proj.weight"]
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"gla: tensor 'model\.layers\.1\.attn\.k_proj\.weight' is missing"):
        load_model(gla_dir)


def test_misshaped_tensor(gla_dir):
    f = gla_dir / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.0.attn.v_proj.weight"] = torch.zeros(32, 64)
    save_file(sd, f)
    with pytest.raises(CheckpointError) as e:
        load_model(gla_dir)
    msg = str(e.value)
    assert "model.safetensors" in msg and "'model.layers.0.attn.v_proj.weight'" in msg
    assert "shape [32, 64]" in msg and "implies [64, 64]" in msg


def test_unexpected_tensor(gla_dir):
    f = gla_dir / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.7.attn.q_proj.weight"] = torch.zeros(2, 2)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"does not describe: \['model\.layers\.7\.attn\.q_proj\.weight'\]"):
        load_model(gla_dir)


@pytest.mark.parametrize("keep", [0.5, 0.999, 100 / 1e9])
def test_truncated_safetensors(gla_dir, keep):
    f = gla_dir / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(max(int(size * keep), 4))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (truncated|unreadable)"):
        load_model(gla_dir)


def test_bin_is_loaded_weights_only(tmp_path, gla_dir):
    # a pickle that would run code is refused by torch.load(weights_only=True)
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    os.remove(gla_dir / "model.safetensors")
    torch.save({"x": Evil()}, gla_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot be read with torch\.load\(weights_only=True\)"):
        load_model(gla_dir)
