"""The README's main-job command, shortened: data, expansion, DeepSpeed post-training, evaluation, table."""
import os
import subprocess
import sys

from tests.train_helpers import ROOT


def test_main_job_short(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "launch" / "train.sh"), "--steps", "6", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "recurrent state (floats/seq)" in out and "held-out perplexity" in out
    state_row = next(line for line in out.splitlines() if line.startswith("recurrent state"))
    assert state_row.split()[-3:] == ["1,024", "2,560", "2,560"]  # layer 0 merged: its state grows 4x
    assert (tmp_path / "gla" / "checkpoints" / "step00000006" / "model" / "manifest.json").exists()
    assert list((tmp_path / "gla").glob("events.out.tfevents.*"))
