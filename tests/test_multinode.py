"""The multi-node launch as the README types it (``HOSTFILE=... NUM_NODES=2 bash launch/train.sh``), for real:
DeepSpeed's pdsh runner reaches two "nodes", ``localhost`` and ``127.0.0.1``, both this machine, over ssh to an
sshd started here for the test (its own keys, config and loopback port, all in a temporary folder; ``ssh`` and
pdsh find it through an ``ssh`` wrapper first on PATH, so ~/.ssh is never touched)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import torch

from statex_dist.parallel.rendezvous import free_port
from tests.train_helpers import GLA, ROOT, checkpoint_weights, make_shards, overrides

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture(scope="module")
def ssh_env(tmp_path_factory):
    """Environment in which ``ssh localhost`` and ``ssh 127.0.0.1`` log in to a test sshd without a password."""
    if not os.path.exists(SSHD) or not shutil.which("pdsh"):
        pytest.fail("the multi-node test needs sshd and pdsh (.ci/run installs openssh-server and pdsh)")
    d = tmp_path_factory.mktemp("ssh")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        "PermitUserEnvironment no\nAcceptEnv none\n")
    (d / "ssh_config").write_text(
        f"Host localhost 127.0.0.1\n  Port {port}\n  IdentityFile {d / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking no\n  BatchMode yes\n  LogLevel ERROR\n")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d / "ssh_config"} "$@"\n')
    os.chmod(bin_dir / "ssh", 0o755)
    made_run_dir = not os.path.isdir("/run/sshd")
    if made_run_dir:
        os.makedirs("/run/sshd", mode=0o755)       # sshd's privilege-separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL,
                            stderr=(d / "sshd.log").open("w"))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    try:
        for _ in range(100):
            r = subprocess.run(["ssh", "127.0.0.1", "true"], env=env, capture_output=True)
            if r.returncode == 0:
                break
            time.sleep(0.1)
        assert r.returncode == 0, (r.stderr.decode(), (d / "sshd.log").read_text())
        yield env
    finally:
        sshd.terminate()
        sshd.wait(30)
        if made_run_dir:
            shutil.rmtree("/run/sshd", ignore_errors=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def train(args, env, timeout=600):
    return subprocess.run(["bash", "launch/train.sh", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("layout", [{}, {"parallel.tp": 2}], ids=["dp2xtp1", "tp2xdp1"])
def test_two_nodes_equal_one_node(tmp_path, ssh_env, shards, layout):
    steps = 3
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    multi = train(overrides(GLA, shards, tmp_path / "multi", steps=steps, **layout),
                  dict(ssh_env, HOSTFILE=str(hostfile), NUM_NODES="2", MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(free_port())))
    out = multi.stdout + multi.stderr
    assert multi.returncode == 0, out[-5000:]
    # pdsh prefixes each node's output with its host; each node's launcher says which node it is
    for host, rank in (("localhost", 0), ("127.0.0.1", 1)):
        assert any(ln.startswith(f"{host}: ") and f"node_rank={rank}" in ln for ln in out.splitlines()), out[-5000:]
        assert any(ln.startswith(f"{host}: ") and "exits successfully" in ln for ln in out.splitlines()), out[-5000:]
    assert f"done: {steps} steps" in out
    one = train(overrides(GLA, shards, tmp_path / "one", steps=steps, **layout),
                dict(os.environ, NPROC="2", MASTER_PORT=str(free_port())))
    assert one.returncode == 0, (one.stdout + one.stderr)[-5000:]
    a, b = checkpoint_weights(tmp_path / "multi", steps), checkpoint_weights(tmp_path / "one", steps)
    assert set(a) == set(b)
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    assert not differ, differ       # the same ranks doing the same work: bit-identical
