"""README's lm-eval command runs on exported tiny StateX models (per-layer shapes: the remote code), over the
local task of tests/lm_eval/. Skipped only where lm-eval is not installed (pip install '.[eval]')."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; never reach for the hub

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from statex_dist.reshard import run  # noqa: E402
from tests.fla_reference import make_fla_gla  # noqa: E402
from tests.test_export_tokenizer import save_tokenizer  # noqa: E402
from tests.test_model_mamba2 import make_hf_mamba2  # noqa: E402
from tests.train_helpers import ROOT  # noqa: E402

pytest.importorskip("lm_eval")

EXPAND = {"gla": ("--expand-layers", "0", "--init", "merge"), "mamba2": ("--expand-layers", "0", "--d-state", "32")}


@pytest.mark.parametrize("arch", ["gla", "mamba2"])
def test_lm_eval_runs_on_an_export(tmp_path, arch):
    src = tmp_path / "src"
    if arch == "gla":
        make_fla_gla(src, vocab_size=101, use_short_conv=True)
    else:
        make_hf_mamba2(src)
    save_tokenizer(src)
    export = tmp_path / "export"
    run(["--src", str(src), "--dst", str(export), "--format", "hf", *EXPAND[arch]])
    assert json.loads((export / "config.json").read_text())["model_type"] == f"statex_{arch}"
    out = tmp_path / "results"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    # README's command, with the task of tests/lm_eval, the CPU and the export's own dtype
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={export},trust_remote_code=True,tokenizer={export},dtype=float32",
                    "--tasks", "statex_tiny", "--include_path", "tests/lm_eval", "--device", "cpu",
                    "--batch_size", "2", "--output_path", str(out)], cwd=ROOT, env=env, check=True, timeout=600)
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["statex_tiny"]
    assert 0.0 <= results["acc,none"] <= 1.0
