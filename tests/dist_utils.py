"""Run a function in N real processes over gloo on this machine, with a hard timeout."""
from __future__ import annotations

import os
import pickle
import traceback

import torch.multiprocessing as mp

from statex_dist.parallel.rendezvous import free_port



def _entry(rank, world, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    torch.set_num_threads(1)
    try:
        result = fn(rank, world, *args)
        err = None
    except Exception:
        result, err = None, traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump((result, err), f)


def run_workers(fn, world: int, *args, tmp_path, timeout: float = 240.0):
    """Start ``world`` processes running ``fn(rank, world, *args)``; return their results in rank order.

    A worker that hangs (a collective waiting on a dead peer) is killed after ``timeout`` seconds and the
    call fails, so a hang costs minutes, not CI's whole budget.
    """
    os.makedirs(tmp_path, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, str(tmp_path))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [i for i, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    if hung:
        raise TimeoutError(f"ranks {hung} still running after {timeout}s (a collective hung)")
    results = []
    for r in range(world):
        path = os.path.join(tmp_path, f"rank{r}.pkl")
        if not os.path.exists(path):
            raise RuntimeError(f"rank {r} died without a result (exit code {procs[r].exitcode})")
        with open(path, "rb") as f:
            result, err = pickle.load(f)
        if err:
            raise RuntimeError(f"rank {r} failed:\n{err}")
        results.append(result)
    return results
