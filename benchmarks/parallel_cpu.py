"""Step time and bytes communicated per training step of the TP / PP / DP layouts, on the CPU over gloo.

A small GLA (hidden 256, 4 layers, heads [4, 1, 4, 1]: head-sharded and value-sharded layers at TP=2,
vocab 4096, untied) and a small Mamba2 (hidden 256, 4 layers, d_state 32, headdim 32, ngroups 1, tied),
batch 4 x seq 256, fp32, through the training path: DeepSpeed's engine (MegatronMPU) or its pipeline
engine, ZeRO-1, torch AdamW (weight decay on matrices), gradient clipping 1.0. One step = the 4 sequences
in micro-batches of ``--micro-batch`` (forward, backward, optimizer step).

Bytes: every torch.distributed collective and p2p call (also those DeepSpeed makes through deepspeed.comm,
which looks torch.distributed's functions up at call time) is wrapped in the worker processes before
megatron-core and DeepSpeed are imported, and counted by op as the size of its buffer:
all_reduce / broadcast / send / recv: the tensor; all_gather(_into_tensor): the gathered output;
reduce_scatter(_tensor): the full input; *_object: the tensors torch moves for them. Calls on a group of
one rank move nothing and are not counted. Figures are per rank and step (mean over ranks), from the
measured steps (warm-up excluded). "wire MB" is what one rank sends by the ring algorithms' factors
(all-reduce 2(p-1)/p, all-gather / reduce-scatter (p-1)/p of the buffer, p the group's size; reduce and
broadcast (p-1)/p averaged over roots; send 1, recv 0): see docs/communication.md. Every rank runs
``--threads`` threads (default 1: one core per rank; more threads per rank degrade badly on a loaded
machine). ``--detail`` lists every (op, group, shape, call site) with the ranks that made it.

    .venv/bin/python benchmarks/parallel_cpu.py [--layouts tp1pp1,tp2,pp2,dp2,tp2pp2] [--models gla,mamba2]
        [--steps 3] [--micro-batch 2] [--threads 1] [--detail] [--checkpoint] [--no-bucket-allreduce]
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from statex_dist.parallel.rendezvous import free_port  # noqa: E402

BATCH, SEQ = 4, 256
MODELS = {
    "gla": dict(arch="gla", vocab_size=4096, hidden_size=256, num_layers=4, num_heads=[4, 1, 4, 1],
                tie_word_embeddings=False),
    "mamba2": dict(arch="mamba2", vocab_size=4096, hidden_size=256, num_layers=4, d_state=[32] * 4, headdim=32,
                   ngroups=1, tie_word_embeddings=True),
}

# --- counting ----------------------------------------------------------------------------------------

TENSOR_OPS = {
    "all_reduce": lambda a: _nb(a["tensor"]),
    "all_reduce_coalesced": lambda a: sum(_nb(t) for t in a["tensors"]),
    "all_gather": lambda a: sum(_nb(t) for t in a["tensor_list"]),
    "all_gather_into_tensor": lambda a: _nb(a["output_tensor"]),
    "_all_gather_base": lambda a: _nb(a["output_tensor"]),
    "reduce_scatter": lambda a: sum(_nb(t) for t in a["input_list"]),
    "reduce_scatter_tensor": lambda a: _nb(a["input"]),
    "_reduce_scatter_base": lambda a: _nb(a["input"]),
    "broadcast": lambda a: _nb(a["tensor"]),
    "reduce": lambda a: _nb(a["tensor"]),
    "gather": lambda a: _nb(a["tensor"]),
    "scatter": lambda a: _nb(a["tensor"]),
    "all_to_all_single": lambda a: _nb(a["input"]),
    "all_to_all": lambda a: sum(_nb(t) for t in a["input_tensor_list"]),
    "send": lambda a: _nb(a["tensor"]),
    "recv": lambda a: _nb(a["tensor"]),
    "isend": lambda a: _nb(a["tensor"]),
    "irecv": lambda a: _nb(a["tensor"]),
    "barrier": lambda a: 0,
}
# calls made of other calls: their bytes are those of the tensor calls torch makes inside them, booked
# under the outer call's name
OBJECT_OPS = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
              "send_object_list", "recv_object_list", "batch_isend_irecv")
P2P = ("send", "recv", "isend", "irecv")
SHAPE_ARG = {"all_reduce": "tensor", "all_gather": "tensor", "all_gather_into_tensor": "input_tensor",
             "_all_gather_base": "input_tensor", "reduce_scatter_tensor": "input", "_reduce_scatter_base": "input",
             "broadcast": "tensor", "reduce": "tensor", "send": "tensor", "recv": "tensor", "isend": "tensor",
             "irecv": "tensor"}
# frames that are the collective's plumbing, not its caller
_PLUMBING = (f"{os.sep}torch{os.sep}", f"deepspeed{os.sep}comm{os.sep}", f"deepspeed{os.sep}runtime{os.sep}compiler",
             f"deepspeed{os.sep}utils{os.sep}", os.path.abspath(__file__))


def _nb(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _short(path: str) -> str:
    for marker in ("site-packages" + os.sep, str(ROOT) + os.sep):
        if marker in path:
            path = path.split(marker, 1)[1]
    parts = path.split(os.sep)
    return "/".join(parts[-2:])


class CommCounter:
    """Wraps torch.distributed's collectives and p2p calls; books (op, group, shape, call site) -> calls, bytes."""

    def __init__(self):
        self.active = False
        self.records: dict[tuple, list] = defaultdict(lambda: [0, 0])
        self.skipped_size1 = 0
        self.labels: dict[tuple, str] = {}
        self._tls = threading.local()
        self._sigs: dict[str, inspect.Signature] = {}

    def install(self) -> None:
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d
        for name in list(TENSOR_OPS) + list(OBJECT_OPS):
            orig = getattr(dist, name, None)
            if orig is None:
                continue
            self._sigs[name] = inspect.signature(orig)
            wrapped = self._wrap(name, orig)
            setattr(dist, name, wrapped)
            if getattr(c10d, name, None) is orig:
                setattr(c10d, name, wrapped)

    def name_groups(self, groups: dict[str, list[int]]) -> None:
        """Label a call by its group's ranks; the first name listed wins where two groups hold the same ranks."""
        for label, ranks in groups.items():
            self.labels.setdefault(tuple(sorted(ranks)), label)

    def _group_of(self, group) -> tuple[str, int]:
        import torch.distributed as dist
        ranks = tuple(sorted(dist.get_process_group_ranks(group))) if group is not None else \
            tuple(range(dist.get_world_size()))
        return self.labels.get(ranks, "ranks" + ",".join(map(str, ranks))), len(ranks)

    def _site(self) -> str:
        f, out = sys._getframe(2), []
        while f is not None and len(out) < 3:
            fn = f.f_code.co_filename
            if not any(p in fn for p in _PLUMBING):
                out.append(f"{_short(fn)}:{f.f_code.co_name}")
            f = f.f_back
        return " < ".join(out)

    def _wrap(self, name, orig):
        counter = self
        is_object = name in OBJECT_OPS

        def wrapped(*args, **kwargs):
            stack = getattr(counter._tls, "stack", None)
            if stack is None:
                stack = counter._tls.stack = []
            if stack and stack[-1][1] == "tensor":  # torch's own nested call: booked with the outer one
                return orig(*args, **kwargs)
            if not is_object and counter.active:
                counter._book(name, stack[0][0] if stack else name, args, kwargs)
            stack.append((name, "object" if is_object else "tensor"))
            try:
                return orig(*args, **kwargs)
            finally:
                stack.pop()

        wrapped.__wrapped__ = orig
        wrapped.__name__ = name
        return wrapped

    def _book(self, name, label, args, kwargs) -> None:
        a = self._sigs[name].bind(*args, **kwargs).arguments
        if name in P2P:
            peer = a.get("dst", a.get("src"))
            group, size = f"p2p:{'to' if name in ('send', 'isend') else 'from'} {peer}", 2
        else:
            group, size = self._group_of(a.get("group"))
            if size == 1:
                self.skipped_size1 += 1
                return
        t = a.get(SHAPE_ARG.get(name, ""), None)
        shape = "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else "-"
        dtype = str(t.dtype).replace("torch.", "") if isinstance(t, torch.Tensor) else "-"
        rec = self.records[(label, f"{group}/{size}", shape, dtype, self._site())]
        rec[0] += 1
        rec[1] += TENSOR_OPS[name](a)

    def take(self) -> dict:
        out = {"|".join(k): list(v) for k, v in self.records.items()}
        self.records.clear()
        return out


# --- one rank ----------------------------------------------------------------------------------------

def _worker(rank, world, port, threads, layout, cfg_dict, weights, opts, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    counter = CommCounter()
    counter.install()  # before megatron-core and DeepSpeed bind any torch.distributed function
    try:
        result, err = _run_rank(counter, layout, cfg_dict, weights, opts), None
    except Exception:
        result, err = None, traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump((result, err), f)


def _run_rank(counter, layout, cfg_dict, weights, opts):
    import warnings
    warnings.filterwarnings("ignore")
    import logging
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import logger as ds_logger
    from megatron.core import parallel_state as ps

    from statex_dist.models.config import config_from_dict
    from statex_dist.models import specs_for
    from statex_dist.parallel import state
    from statex_dist.parallel.deepspeed_mpu import MegatronMPU, ensure_deepspeed_comm
    from statex_dist.training.optim import param_groups
    ds_logger.setLevel(logging.WARNING)

    tp, pp, dp = layout
    cfg = config_from_dict(cfg_dict)
    state.initialize(tp, pp)
    ensure_deepspeed_comm()
    ranks = lambda g: dist.get_process_group_ranks(g)  # noqa: E731
    counter.name_groups({"TP": ranks(ps.get_tensor_model_parallel_group()),
                         "PP": ranks(ps.get_pipeline_model_parallel_group()),
                         "DP": ranks(ps.get_data_parallel_group()),
                         "TPxPP": ranks(ps.get_model_parallel_group()),
                         "world": list(range(dist.get_world_size()))})
    specs = specs_for(cfg, tp)
    micro = opts["micro_batch"]
    if BATCH % (micro * dp):
        raise ValueError(f"batch {BATCH} is not a multiple of micro-batch {micro} x DP {dp}")
    gas = BATCH // (micro * dp)
    ds_config = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": micro,
                 "gradient_accumulation_steps": gas, "zero_optimization": {"stage": 1},
                 "gradient_clipping": 1.0, "bf16": {"enabled": False}, "fp16": {"enabled": False},
                 "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
    if opts["no_bucket_allreduce"]:
        ds_config["zero_optimization"]["use_multi_rank_bucket_allreduce"] = False
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ + 1), generator=g)
    ids, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    dp_rank, n = ps.get_data_parallel_rank(), BATCH // dp
    ids, labels = ids[dp_rank * n:(dp_rank + 1) * n], labels[dp_rank * n:(dp_rank + 1) * n]
    micros = list(zip(ids.split(micro), labels.split(micro)))

    if pp > 1:
        from statex_dist.models import pipeline as pipe
        module = pipe.pipeline_module(cfg, torch.float32, tp, pp,
                                      activation_checkpoint_interval=1 if opts["checkpoint"] else 0)
        pipe.load_full(module, weights, specs)
        opt = torch.optim.AdamW(param_groups(module, 0.1), lr=1e-4)
        engine, *_ = deepspeed.initialize(model=module, optimizer=opt, config=ds_config)

        def step():
            engine.train_batch(iter(micros))
    else:
        from statex_dist.models import build_model
        from statex_dist.parallel.weights import load_full
        model = build_model(cfg, init=False)
        model.activation_checkpointing = opts["checkpoint"]
        load_full(model, weights, specs)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config, mpu=MegatronMPU())

        def step():
            for x, y in micros:
                loss = engine(x, labels=y)
                engine.backward(loss)
                engine.step()

    times, comm = [], []
    for i in range(opts["warmup"] + opts["steps"]):
        measured = i >= opts["warmup"]
        counter.active = measured
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        counter.active = False
        if measured:
            times.append(dt)
            comm.append(counter.take())
    state.destroy()
    return {"rank": int(os.environ["RANK"]), "times": times, "comm": comm, "skipped_size1": counter.skipped_size1}


# --- driver ------------------------------------------------------------------------------------------


def run_layout(layout, cfg_dict, weights, opts, threads: int, timeout: float):
    import torch.multiprocessing as mp
    tp, pp, dp = layout
    world = tp * pp * dp
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        port = free_port()
        procs = [ctx.Process(target=_worker, args=(r, world, port, threads, layout, cfg_dict, weights, opts, out_dir))
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.time() + timeout
        for p in procs:
            p.join(max(1.0, deadline - time.time()))
        hung = [i for i, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout}s")
        results = []
        for r in range(world):
            with open(os.path.join(out_dir, f"rank{r}.pkl"), "rb") as f:
                result, err = pickle.load(f)
            if err:
                raise RuntimeError(f"rank {r} failed:\n{err}")
            results.append(result)
    return results


def full_weights(cfg_dict) -> dict:
    """The full-shape weights of the one-process model (seed 0), built in a child so this process never
    initialises torch.distributed or imports megatron-core."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as d:
        p = ctx.Process(target=_weights_child, args=(cfg_dict, d))
        p.start()
        p.join(300)
        with open(os.path.join(d, "w.pkl"), "rb") as f:
            return pickle.load(f)


def _weights_child(cfg_dict, out_dir):
    import warnings
    warnings.filterwarnings("ignore")
    from statex_dist.models.config import config_from_dict
    from statex_dist.models import build_model
    torch.manual_seed(0)
    model = build_model(config_from_dict(cfg_dict))
    with open(os.path.join(out_dir, "w.pkl"), "wb") as f:
        pickle.dump({k: v.detach().clone() for k, v in model.named_parameters()}, f)


def parse_layout(s: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(?:tp(\d+))?(?:pp(\d+))?(?:dp(\d+))?", s.strip().lower())
    if not m or not s.strip():
        raise argparse.ArgumentTypeError(f"layout {s!r}: expected e.g. tp1pp1, tp2, pp2, dp2, tp2pp2")
    return tuple(int(x) if x else 1 for x in m.groups())


def layout_name(layout) -> str:
    tp, pp, dp = layout
    return f"TP{tp}PP{pp}" + (f"DP{dp}" if dp > 1 else "")


def wire_factor(op: str, p: int) -> float:
    """Bytes one rank sends per buffer byte: ring all-reduce 2(p-1)/p; all-gather, reduce-scatter, and
    reduce / broadcast averaged over their roots (p-1)/p; send 1; recv 0 (its sender counts it)."""
    if op in ("all_reduce", "all_reduce_coalesced"):
        return 2 * (p - 1) / p
    if op in ("recv", "irecv"):
        return 0.0
    if op in ("send", "isend"):
        return 1.0
    return (p - 1) / p


def summarise(results) -> dict:
    """Per rank and step (mean over ranks) by op; the detail summed over ranks with the ranks making each
    call. Checks that every measured step moved the same bytes."""
    world = len(results)
    step_ms = max(statistics.median(r["times"]) for r in results) * 1e3
    steady = all(sorted(s.items()) == sorted(r["comm"][0].items()) for r in results for s in r["comm"])
    by_op, wire = defaultdict(float), 0.0
    detail = defaultdict(lambda: {"ranks": [], "calls": 0, "bytes": 0})
    per_rank = []
    for r in results:
        last = r["comm"][-1]
        per_rank.append(sum(v[1] for v in last.values()))
        for key, (calls, nbytes) in last.items():
            op, group = key.split("|")[:2]
            by_op[op] += nbytes / world
            wire += wire_factor(op, int(group.rsplit("/", 1)[1])) * nbytes / world
            d = detail[key]
            d["ranks"].append(r["rank"])
            d["calls"] += calls
            d["bytes"] += nbytes
    return {"ranks": world, "step_ms": step_ms, "bytes": sum(by_op.values()), "wire_bytes": wire,
            "by_op": dict(by_op), "steady": steady, "bytes_per_rank": per_rank, "detail": dict(detail),
            "skipped_size1_calls": sum(r["skipped_size1"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="tp1pp1,tp2,pp2,dp2,tp2pp2")
    ap.add_argument("--models", default="gla,mamba2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per layout")
    ap.add_argument("--detail", action="store_true", help="also print every (op, group, shape, call site)")
    ap.add_argument("--checkpoint", action="store_true",
                    help="activation checkpointing of every block (the run config's parallel.activation_checkpointing)")
    ap.add_argument("--no-bucket-allreduce", action="store_true",
                    help="ZeRO's use_multi_rank_bucket_allreduce=false (reduce each partition to its owner)")
    args = ap.parse_args()
    layouts = [parse_layout(s) for s in args.layouts.split(",")]
    models = [m.strip() for m in args.models.split(",")]
    opts = {"steps": args.steps, "warmup": args.warmup, "micro_batch": args.micro_batch,
            "no_bucket_allreduce": args.no_bucket_allreduce, "checkpoint": args.checkpoint}

    rows = []
    for model in models:
        cfg_dict = MODELS[model]
        weights = full_weights(cfg_dict)
        params = sum(v.numel() for v in weights.values())
        for layout in layouts:
            t0 = time.time()
            s = summarise(run_layout(layout, cfg_dict, weights, opts, args.threads, args.timeout))
            s.update(layout=layout_name(layout), model=model, params=params, wall_s=time.time() - t0)
            rows.append(s)
            print(f"# {s['layout']} {model}: {s['step_ms']:.0f} ms/step, {s['bytes'] / 1e6:.3f} MB/step "
                  f"({s['wall_s']:.0f} s)", file=sys.stderr, flush=True)

    ops = sorted({op for r in rows for op in r["by_op"]}, key=lambda o: -max(r["by_op"].get(o, 0) for r in rows))
    zero = "ZeRO-1" + (" (use_multi_rank_bucket_allreduce=false)" if args.no_bucket_allreduce else "")
    ckpt = ", activation checkpointing" if args.checkpoint else ""
    print(f"batch {BATCH} x seq {SEQ}, fp32, micro-batch {args.micro_batch}, {zero}, AdamW, clip 1.0{ckpt}, "
          f"{args.threads} thread(s) per rank, {os.cpu_count()} CPUs; torch {torch.__version__}")
    print("MB = 1e6 bytes per rank and step, mean over ranks: buffer sizes by op; wire = sent by one rank")
    head = (f"{'layout':<11}{'model':<8}{'ranks':>6}{'step ms':>9}{'MB/step':>9}{'wire MB':>9}  "
            + "".join(f"{o:>{max(11, len(o) + 1)}}" for o in ops))
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = "".join(f"{r['by_op'].get(o, 0) / 1e6:>{max(11, len(o) + 1)}.3f}" for o in ops)
        flag = "" if r["steady"] else "  (measured steps differ)"
        print(f"{r['layout']:<11}{r['model']:<8}{r['ranks']:>6}{r['step_ms']:>9.0f}{r['bytes'] / 1e6:>9.3f}"
              f"{r['wire_bytes'] / 1e6:>9.3f}  {cells}{flag}")
    if args.detail:
        for r in rows:
            if not r["detail"]:
                continue
            print(f"\n{r['layout']} {r['model']}: one step, summed over the ranks listed (group/size)")
            print(f"  {'op':<23}{'group':<13}{'shape':<13}{'dtype':<8}{'ranks':<9}{'calls':>6}{'bytes':>12}  site")
            for key, d in sorted(r["detail"].items(), key=lambda kv: -kv[1]["bytes"]):
                op, group, shape, dtype, site = key.split("|")
                ranks = ",".join(map(str, sorted(d["ranks"])))
                print(f"  {op:<23}{group:<13}{shape:<13}{dtype:<8}{ranks:<9}{d['calls']:>6}{d['bytes']:>12,}  {site}")
    print(json.dumps({"benchmark": "parallel_cpu", "batch": BATCH, "seq": SEQ, "micro_batch": args.micro_batch,
                      "threads_per_rank": args.threads, "zero": zero, "checkpoint": args.checkpoint, "rows": rows}))

if __name__ == "__main__":
    main()
