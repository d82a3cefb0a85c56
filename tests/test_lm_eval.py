"""README's lm-eval command on exported tiny StateX models (per-layer shapes: the remote code), over the local
task of tests/lm_eval_tasks/: every log-likelihood lm-eval's HF backend reports equals the one load_model gives
for the same request, and so does its accuracy.

Skipped where lm-eval is not installed (`pip install '.[eval]'`, not part of install.sh). .ci/run installs it
and sets STATEX_REQUIRE_LM_EVAL=1, which turns the skip into a failure."""
import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; never reach for the hub

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from statex_dist import archs, load_model  # noqa: E402
from statex_dist.reshard import run  # noqa: E402
from tests.fla_reference import make_fla_gdn, make_fla_gla  # noqa: E402
from tests.test_export_tokenizer import save_tokenizer  # noqa: E402
from tests.test_model_mamba2 import make_hf_mamba2  # noqa: E402
from tests.train_helpers import ROOT  # noqa: E402

_spec = importlib.util.find_spec("lm_eval")
MISSING = _spec is None or _spec.origin is None  # origin None: a bare folder named lm_eval on sys.path, not lm-eval
if MISSING and os.environ.get("STATEX_REQUIRE_LM_EVAL") == "1":
    raise ImportError("lm-eval is not installed (pip install '.[eval]'), and STATEX_REQUIRE_LM_EVAL=1 requires it")
pytestmark = pytest.mark.skipif(MISSING, reason="lm-eval is not installed (pip install '.[eval]', README: Evaluate)")

TASK = ROOT / "tests" / "lm_eval_tasks" / "statex_tiny.jsonl"
EXPAND = {"gla": ("--expand-layers", "0", "--init", "merge"), "mamba2": ("--expand-layers", "0", "--d-state", "32"),
          "gdn": ("--expand-layers", "0", "--heads", "1", "--init", "merge")}
# Log-likelihoods in nats. The remote code's logits equal load_model's to a relative 1e-5 (tests/test_remote_code.py)
# with logits of at most a few units here, so a log-softmax differs by some 1e-5 at most; every continuation of the
# task is one token. Scoring a wrong token, a shifted position or without the context moves a value by far more:
# asserted below, the spread is over 100 x TOL.
TOL = 1e-4


def make_source(folder, arch):
    if arch == "gla":
        # initializer_range 0.1: with fla's 0.02 the tiny GLA's next-token distribution hardly depends on the
        # context (1e-5 between contexts), and a scorer that dropped the context would pass
        make_fla_gla(folder, vocab_size=101, use_short_conv=True, initializer_range=0.1)
    elif arch == "gdn":
        make_fla_gdn(folder, vocab_size=101, initializer_range=0.1)
    else:
        make_hf_mamba2(folder)
    save_tokenizer(folder)


def loglikelihood(model, tok, context, continuation):
    """lm-eval's definition for a causal LM: log P(continuation | context), summed over the tokens that tokenizing
    context + continuation adds after the context's own; and whether each is the argmax (is_greedy)."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    assert whole[:len(ctx)] == ctx and len(whole) > len(ctx)
    with torch.no_grad():
        logp = model(torch.tensor([whole])).double().log_softmax(-1)[0]
    rows = logp[len(ctx) - 1:len(whole) - 1]
    cont = torch.tensor(whole[len(ctx):])
    return rows.gather(1, cont[:, None]).sum().item(), bool(torch.equal(rows.argmax(-1), cont))


@pytest.mark.parametrize("arch", ["gla", "mamba2", "gdn"])
def test_lm_eval_loglikelihoods_equal_load_model(tmp_path, arch):
    src = tmp_path / "src"
    make_source(src, arch)
    export = tmp_path / "export"
    run(["--src", str(src), "--dst", str(export), "--format", "hf", *EXPAND[arch]])
    assert json.loads((export / "config.json").read_text())["model_type"] == archs.get(arch).remote.model_type
    out = tmp_path / "results"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    # README's command, with the task of tests/lm_eval_tasks, the CPU, the export's own dtype and every request logged
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={export},trust_remote_code=True,tokenizer={export},dtype=float32",
                    "--tasks", "statex_tiny", "--include_path", "tests/lm_eval_tasks", "--device", "cpu",
                    "--batch_size", "2", "--output_path", str(out), "--log_samples"],
                   cwd=ROOT, env=env, check=True, timeout=600)
    acc = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["statex_tiny"]["acc,none"]
    samples = sorted((json.loads(line) for line in next(out.rglob("samples_statex_tiny_*.jsonl")).open()),
                     key=lambda s: s["doc_id"])
    docs = [json.loads(line) for line in TASK.read_text().splitlines()]
    assert [s["doc"] for s in samples] == docs

    model, tok = load_model(export), AutoTokenizer.from_pretrained(export)
    theirs, ours, hits, by_continuation = [], [], 0, {}
    for sample, doc in zip(samples, docs):
        requests = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        assert requests == [(doc["context"], " " + choice) for choice in doc["choices"]]
        scores = []
        for (context, continuation), (ll, greedy) in zip(requests, sample["filtered_resps"], strict=True):
            want, want_greedy = loglikelihood(model, tok, context, continuation)
            theirs.append(float(ll))
            ours.append(want)
            assert abs(float(ll) - want) <= TOL, (arch, context, continuation, float(ll), want)
            assert str(greedy) == str(want_greedy), (arch, context, continuation)
            scores.append(want)
            by_continuation.setdefault(continuation, []).append(want)
        hits += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    assert len(theirs) == sum(len(d["choices"]) for d in docs) == 12
    print(f"{arch}: {len(theirs)} log-likelihoods, max |lm-eval - load_model| "
          f"{max(abs(a - b) for a, b in zip(theirs, ours)):.2e} nats (tolerance {TOL:g}), acc {acc}")
    assert acc == hits / len(docs)
    # the comparison can tell a wrong token or a lost context: the values spread far beyond TOL, also those of one
    # continuation after different contexts
    assert max(ours) - min(ours) > 100 * TOL
    assert max(max(v) - min(v) for v in by_continuation.values()) > 100 * TOL
