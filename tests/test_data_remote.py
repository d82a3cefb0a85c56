"""Shards from a server: data.train=http://... (a server on 127.0.0.1 that the test starts) and pipe:COMMAND
read the same samples as the local folder; training runs from the server as users type it; a server that
stops inside a shard gives one retry, then one line naming the URL."""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

from statex_dist.data import ShardError, build_loader, check_shards
from tests.train_helpers import ROOT, make_shards

pytestmark = pytest.mark.timeout(400)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; in ``stop`` mode a shard gets its first 700 bytes and then the connection closes, and a
    second request for it is closed unanswered (a server that went away)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append(self.path)
        if not (srv.stop and self.path.endswith(".tar")):
            return super().do_GET()
        self.close_connection = True
        if self.path in srv.cut:
            return
        srv.cut.add(self.path)
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:700])     # the first tar header and part of the first sample
        self.wfile.flush()


@pytest.fixture
def server(tmp_path_factory):
    folder = make_shards(tmp_path_factory.mktemp("served"), seq_len=128)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_Handler, directory=str(folder.parent)))
    srv.stop, srv.requests, srv.cut = False, [], set()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, folder, f"http://127.0.0.1:{srv.server_address[1]}/{folder.name}"
    srv.shutdown()
    srv.server_close()


def _order(spec, n=6):
    it = iter(build_loader(spec, dp_rank=0, dp_size=1, micro_batch=4, seed=1, workers=1, shuffle_buffer=8,
                           return_index=True))
    return [next(it)["index"].tolist() for _ in range(n)]


def test_http_and_pipe_read_the_local_samples(server):
    srv, folder, url = server
    m = check_shards(url)
    assert m.fingerprint == check_shards(folder).fingerprint       # a saved position carries over
    want = _order(folder)
    assert _order(url) == want
    assert any(p.endswith(".tar") for p in srv.requests)
    assert _order(f"pipe:cat {folder}/{{}}") == want


def test_training_from_a_server_and_its_stop(server, tmp_path):
    srv, folder, url = server
    env = dict(os.environ, DEBUG="1")
    base = ["bash", "launch/train.sh", "configs/cpu-gla-tiny.yaml", f"data.train={url}", "schedule.total_steps=2",
            "schedule.warmup_steps=1", "checkpoint.every=0", "eval.tasks=[]", "logging.every=1"]
    r = subprocess.run(base + [f"logging.dir={tmp_path / 'a'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 2/2" in r.stdout and any(p.endswith(".tar") for p in srv.requests)
    srv.stop = True
    r = subprocess.run(base + [f"logging.dir={tmp_path / 'b'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith(f"statex_dist.train: error: shard {url}/shard-0000"), lines[0]
    assert "the server stopped sending at byte" in lines[0] and "the retry failed" in lines[0], lines[0]


def test_stop_error_in_process(server):
    srv, folder, url = server
    srv.stop = True
    with pytest.raises(ShardError, match=rf"shard {url}/shard-\d+\.tar: the server stopped sending at byte \d+ "
                                         rf"of \d+ \(.*\); the retry failed \(.*\)"):
        _order(url)
