"""Where a rank's memory goes, written as JSON when ``STATEX_MEMORY_REPORT=<folder>`` is set (off otherwise:
every method of the report a run holds is then a no-op). benchmarks/memory.py reads it.

Per rank, ``<folder>/rank<R>.json`` holds:

- ``points``: the process's RSS at set-up stages (``libraries``: after the process groups, before the model;
  ``model``; ``engine``), with VmHWM, the peak since the process started (the engine's construction included).
- ``phases``: steps, checkpoint saves and the resume, each with RSS before / after and the peak inside it.
  The peak is reset before each phase (``/proc/self/clear_refs`` = 5 resets VmHWM to the current RSS), so it
  is the phase's own peak; where that is not available the peak is ``ru_maxrss`` (since process start) and
  ``peak_resettable`` is false.
- ``activations``: the bytes autograd saves for backward, live at once, at most, over a step: every tensor
  packed through ``torch.autograd.graph.saved_tensors_hooks`` is counted by storage (each storage once, while
  any saved reference to it lives), parameters and views of them excluded (they are weights). Tensors a custom
  autograd Function keeps as ``ctx`` attributes instead of ``save_for_backward`` are not seen.
- ``tensors``: the bytes of the tensors that live just before the optimizer step (gradients still held, the
  optimizer state made by the first step) and just after it, by category, each storage counted once (by
  ``untyped_storage().data_ptr()``), the first category that reaches it owning it: weights (the module's
  parameters and buffers, by dtype: under ZeRO / bf16 the flat buffers they are views of), master (the fp32
  partitions the optimizer steps when they are not the weights), optimizer_state (AdamW's moments), grads
  (``param.grad``, ``param.grad_accum``, DeepSpeed's gradient buffers), comm_buffers (bucket / ipg buffers,
  the pipeline engine's send / receive buffers), other_deepspeed (any other tensor DeepSpeed's optimizer or
  engine holds) and other_tensors (every other live tensor the garbage collector knows of). ``detail`` names
  each DeepSpeed attribute with its bytes, to find copies.
- ``stages`` inside each phase: the largest RSS a sampling thread saw (every ``STATEX_MEMORY_SAMPLE_MS``, 5 ms)
  while the rank was in the forward pass, the backward pass, the optimizer step (DeepSpeed's, clipping and
  the weights' update included) or elsewhere, and the RSS when that stage began: the peak's place in the step.
  Sampled, so a spike shorter than the period can be missed: the phase's ``peak`` (VmHWM) is the exact one.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ENV = "STATEX_MEMORY_REPORT"
MAX_STEPS = int(os.environ.get("STATEX_MEMORY_STEPS", "3"))   # phases recorded per kind: the first few
MAX_SAVES = 2
SAMPLE_S = float(os.environ.get("STATEX_MEMORY_SAMPLE_MS", "5")) / 1000


def from_env():
    folder = os.environ.get(ENV)
    return MemoryReport(Path(folder)) if folder else _Off()


class _Off:
    enabled = False

    def point(self, *a, **k):
        pass

    def attach(self, *a, **k):
        pass

    @contextmanager
    def phase(self, *a, **k):
        yield

    def write(self):
        pass


def _status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:   # no procfs (not Linux): the callers fall back to psutil / getrusage
        pass
    return None


def rss() -> int:
    v = _status_kb("VmRSS")
    if v is None:
        import psutil
        v = psutil.Process().memory_info().rss
    return v


def peak() -> int:
    v = _status_kb("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:   # not allowed or no procfs: reported as "peak_resettable": false in the rank's JSON
        return False


def _children_rss() -> int:
    """The loader workers' RSS: separate processes, not in the rank's own figures."""
    import psutil
    total = 0
    for c in psutil.Process().children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:   # a worker that exited between the listing and the read holds nothing
            pass
    return total


def _storage(t):
    """(address, bytes) of a tensor's storage, or None (meta tensors, tensors without data)."""
    import torch
    if not isinstance(t, torch.Tensor) or t.device.type == "meta":
        return None
    try:
        s = t.untyped_storage()
        return (s.data_ptr(), s.nbytes()) if s.data_ptr() else None
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _tensors_in(obj, depth: int = 3):
    """(tensor, is a .grad) in obj: a tensor and its grad, or lists / tuples / dicts of them, ``depth`` deep."""
    import torch
    if isinstance(obj, torch.Tensor):
        yield obj, False
        if getattr(obj, "grad", None) is not None:
            yield obj.grad, True
    elif depth > 0 and isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors_in(x, depth - 1)
    elif depth > 0 and isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors_in(x, depth - 1)


# DeepSpeed attribute names -> category; the first pattern found in the name wins. Names of the ZeRO-1/2
# optimizer (runtime/zero/stage_1_and_2.py), the bf16 optimizer (runtime/bf16_optimizer.py), the fp16/bf16
# DDP optimizer (runtime/fp16/fused_optimizer.py) and the pipeline engine (runtime/pipe/engine.py).
_PATTERNS = [("ipg", "comm_buffers"), ("bucket", "comm_buffers"), ("pipe_buffers", "comm_buffers"),
             ("recv", "comm_buffers"), ("send", "comm_buffers"), ("grad", "grads"),
             ("fp32", "master"), ("single_partition", "master"), ("bit16", "weights"), ("bf16", "weights"),
             ("fp16", "weights"), ("buffer", "comm_buffers")]
CATEGORIES = ["weights", "master", "optimizer_state", "grads", "comm_buffers", "other_deepspeed", "other_tensors"]


def _category(attr: str) -> str:
    a = attr.lower()
    return next((c for p, c in _PATTERNS if p in a), "other_deepspeed")


class MemoryReport:
    enabled = True

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = int(os.environ.get("RANK", "0"))
        self.data = {"rank": self.rank, "pid": os.getpid(), "peak_resettable": reset_peak(), "points": {},
                     "phases": {}, "tensors": {}}
        self.counts = {}
        self.run = None
        self.sampler = _Sampler()

    # --- points and phases ---------------------------------------------------------------------------------
    def point(self, name: str, **extra) -> None:
        self.data["points"][name] = {"rss": rss(), "peak_since_start": peak(), "t": time.time(), **extra}
        self.write()

    @contextmanager
    def phase(self, name: str, kind: str = "", activations: bool = False):
        kind = kind or name
        n = self.counts.get(kind, 0)
        if n >= (MAX_SAVES if kind == "save" else MAX_STEPS):
            yield
            return
        self.counts[kind] = n + 1
        gc.collect()
        before = rss()
        resettable = reset_peak()
        saved = _SavedBytes(self._param_storages()) if activations else None
        t0 = time.time()
        self.sampler.stages = stages = {}
        try:
            with (saved.hooks() if saved else _nothing()):
                yield
        finally:
            self.sampler.stages = None
        rec = {"kind": kind, "rss_before": before, "peak": peak(), "rss_after": rss(), "seconds": time.time() - t0,
               "peak_resettable": resettable, "stages": stages}
        if saved:
            rec["activations_saved_peak"] = saved.peak
            rec["activations_saved_total"] = saved.total
        if name == "restore":
            rec["peak_since_start"] = rec["peak"]
        self.data["phases"][name] = rec
        self.data["loader_workers_rss"] = _children_rss()
        self.write()

    # --- tensors ----------------------------------------------------------------------------------------------
    def attach(self, run) -> None:
        """After the engine is built: what the run is, and the optimizer's step wrapped to count the tensors
        around it."""
        import torch.distributed as dist
        self.run = run
        c = run.run_cfg
        params, seen = 0, set()
        for p in run.module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params += int(getattr(p, "ds_numel", p.numel()))
        self.data["run"] = {"world": dist.get_world_size(), "tp": c.parallel.tp, "pp": c.parallel.pp,
                            "dp": run.dp, "zero": c.parallel.zero_stage, "dtype": str(run.dtype).removeprefix("torch."),
                            "params_rank": params, "trainable": run.trainable, "stage": run.stage,
                            "tp_rank": run.tp_rank, "dp_rank": run.dp_rank, "seq": c.data.seq_len,
                            "micro_batch": c.data.micro_batch, "global_batch": c.data.global_batch, "gas": run.gas,
                            "optimizer": type(run.engine.optimizer).__name__}
        opt = run.engine.optimizer
        inner = opt.step

        def step(*a, **k):
            self._count("before_step")
            with self.sampler.entered("optimizer"):
                out = inner(*a, **k)
            self._count("after_step")
            return out
        opt.step = step   # an instance attribute: the engines call self.optimizer.step()
        table = getattr(type(run.engine), "_INSTRUCTION_MAP", None)
        if table is not None:
            # the pipeline engine runs each instruction from this class-level table (an unbound function per
            # instruction type): an instance copy with the passes wrapped takes its place
            stages = {"_exec_forward_pass": "forward", "_exec_backward_pass": "backward"}
            run.engine._INSTRUCTION_MAP = {k: self._staged(f, stages[f.__name__]) if f.__name__ in stages else f
                                           for k, f in table.items()}
        else:
            self._wrap_stage(run.engine, "forward", "forward")
            self._wrap_stage(run.engine, "backward", "backward")
        self._count("engine")

    def _staged(self, fn, stage: str):
        def wrapped(*a, **k):
            with self.sampler.entered(stage):
                return fn(*a, **k)
        return wrapped

    def _wrap_stage(self, obj, method: str, stage: str) -> None:
        # an instance attribute: nn.Module.__call__ reads self.forward
        setattr(obj, method, self._staged(getattr(obj, method), stage))

    def _param_storages(self) -> set:
        if self.run is None:
            return set()
        out = set()
        for p in self.run.module.parameters():
            s = _storage(p)
            if s:
                out.add(s[0])
        return out

    def _count(self, when: str) -> None:
        """Bytes by category of the tensors alive now (each storage once); kept as the largest of its kind."""
        import torch

        from statex_dist.training.optimizer_state import base_optimizer
        run = self.run
        owner: dict[int, str] = {}
        sizes: dict[int, int] = {}
        detail: dict[str, int] = {}
        by_dtype: dict[str, int] = {}

        def add(t, cat, name=None):
            s = _storage(t)
            if s is None:
                return
            ptr, nb = s
            if ptr in owner:
                return
            owner[ptr], sizes[ptr] = cat, nb
            if name:
                detail[name] = detail.get(name, 0) + nb
            if cat == "weights":
                k = str(t.dtype).removeprefix("torch.")
                by_dtype[k] = by_dtype.get(k, 0) + nb

        for p in run.module.parameters():
            add(p, "weights")
        for b in run.module.buffers():
            add(b, "weights")
        base = base_optimizer(run.engine)
        for g in base.param_groups:
            for p in g["params"]:
                add(p, "master", "AdamW.param_groups.params")
        for st in base.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.numel() > 1:
                    add(v, "optimizer_state", f"AdamW.state.{k}")
        for p in run.module.parameters():
            for a in ("grad", "grad_accum"):
                g = getattr(p, a, None)
                if isinstance(g, torch.Tensor):
                    add(g, "grads", f"param.{a}")
        for g in base.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    add(p.grad, "grads", "AdamW.param_groups.params.grad")
        wrapper = run.engine.optimizer
        for obj, prefix in ((wrapper, type(wrapper).__name__), (run.engine, type(run.engine).__name__)):
            if obj is base:
                continue
            for attr, val in list(vars(obj).items()):
                if attr in ("module", "optimizer", "basic_optimizer", "client_model_parameters"):
                    continue
                for t, is_grad in _tensors_in(val):
                    add(t, "grads" if is_grad else _category(attr), f"{prefix}.{attr}" + (".grad" if is_grad else ""))
        import warnings
        with warnings.catch_warnings():   # isinstance on torch.distributed's deprecated reduce_op warns
            warnings.simplefilter("ignore")
            for o in gc.get_objects():
                if isinstance(o, torch.Tensor):
                    add(o, "other_tensors", "gc")
        totals = {c: 0 for c in CATEGORIES}
        for ptr, cat in owner.items():
            totals[cat] += sizes[ptr]
        rec = {"rss": rss(), "counted": sum(totals.values()), **totals, "weights_by_dtype": by_dtype,
               "detail": {k: v for k, v in sorted(detail.items(), key=lambda kv: -kv[1]) if v}}
        prev = self.data["tensors"].get(when)
        if prev is None or rec["counted"] >= prev["counted"]:
            self.data["tensors"][when] = rec

    def write(self) -> None:
        path = self.folder / f"rank{self.rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, path)


@contextmanager
def _nothing():
    yield


class _SavedBytes:
    """Bytes autograd holds for backward, live at once: counted at pack, released when autograd drops the
    packed object (after the backward that used it)."""

    def __init__(self, exclude: set):
        self.exclude = exclude
        self.refs: dict[int, list] = {}
        self.live = self.peak = self.total = 0

    def hooks(self):
        import torch
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t):
        s = _storage(t)
        if s is None or s[0] in self.exclude:
            return t
        ptr, nb = s
        r = self.refs.get(ptr)
        if r is None:
            self.refs[ptr] = r = [0, nb]
            self.live += nb
            self.total += nb
            self.peak = max(self.peak, self.live)
        r[0] += 1
        return _Saved(t, ptr, self)

    def _drop(self, ptr: int) -> None:
        r = self.refs.get(ptr)
        if r is None:
            return
        r[0] -= 1
        if r[0] == 0:
            self.live -= r[1]
            del self.refs[ptr]


class _Saved:
    __slots__ = ("t", "ptr", "owner")

    def __init__(self, t, ptr, owner):
        self.t, self.ptr, self.owner = t, ptr, owner

    def __del__(self):
        self.owner._drop(self.ptr)


def _unpack(s):
    return s.t if isinstance(s, _Saved) else s


class _Sampler:
    """RSS sampled on a thread, the largest value kept per stage (``forward``, ``backward``, ``optimizer``,
    ``other``) of the phase being recorded."""

    def __init__(self):
        self.stage = "other"
        self.stages: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(SAMPLE_S):
            st = self.stages
            if st is not None:
                rec = st.setdefault(self.stage, {"peak": 0, "rss_at_start": None})
                rec["peak"] = max(rec["peak"], rss())

    @contextmanager
    def entered(self, stage: str):
        prev, self.stage = self.stage, stage
        st = self.stages
        if st is not None:
            rec = st.setdefault(stage, {"peak": 0, "rss_at_start": None})
            now = rss()
            rec["peak"] = max(rec["peak"], now)
            if rec["rss_at_start"] is None:
                rec["rss_at_start"] = now
        try:
            yield
        finally:
            self.stage = prev
