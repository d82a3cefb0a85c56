"""The training job: config -> process groups -> weights (optionally StateX-expanded) -> model -> DeepSpeed
engine -> webdataset shards in a layout-free order -> steps -> tensorboard / eval / checkpoints.

    deepspeed --num_gpus N -m statex_dist.train CONFIG.yaml [key.sub=value ...]   (or launch/train.sh)
    python -m statex_dist.train CONFIG.yaml ...                                     (one process, debug mode)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from statex_dist.checkpoint.sharded import ShardedCheckpoint
from statex_dist.cli_errors import EXPECTED, Parser, fail
from statex_dist.data import build_loader
from statex_dist.data.errors import ShardError
from statex_dist.eval import EvalConfig, evaluate, log_to_tensorboard
from statex_dist.eval.report import summary_line
from statex_dist.models import build_model
from statex_dist.models.names import by_internal_name, named_internal_parameters
from statex_dist.parallel import context
from statex_dist.parallel.device import select
from statex_dist.run_config import RunConfig, dump, key_table, load_run_config, signal_number, validate
from statex_dist.training import checkpoints, ds_setup, host_memory, memory_report, optim, optimizer_state
from statex_dist.training.checkpoints import CheckpointWriteError
from statex_dist.training.flops import train_flops_per_token
from statex_dist.training.preemption import SignalStop


class Run:
    """One training run on this rank; ``Run(run_cfg).train()``."""

    def __init__(self, run_cfg: RunConfig):
        self.run_cfg = run_cfg
        self.memory = memory_report.from_env()  # STATEX_MEMORY_REPORT=<folder>: bytes by kind, per rank
        self._check()         # everything that can be checked without peers, before any collective
        self._groups()        # process groups: megatron-core's TP x PP x DP, DeepSpeed's comm
        self.memory.point("libraries")
        model = self._model()  # this rank's stage, its shards filled (from the source, or a checkpoint)
        self.memory.point("model")
        self._engine(model)   # AdamW, the schedule and DeepSpeed's engine around the model
        self.memory.attach(self)
        self.memory.point("engine")
        self.step, self.data_position = 0, None
        if self.resume is not None:
            with self.memory.phase("restore"):
                self._restore(self.resume, self.meta, self.same_layout)
        self._data()          # the loader, at the resumed position
        self._logging()

    # --- set-up, in the order a run takes it ---------------------------------------------------------
    def _check(self) -> None:
        from statex_dist.training.preflight import preflight
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.checked = preflight(self.run_cfg, self.world)
        c = self.checked
        self.device, self.dtype, self.source, self.model_config = c.device, c.dtype, c.source, c.model_config
        self.ckpt_dir, self.resume, self.meta = c.ckpt_dir, c.resume, c.meta
        # before any process is forked (loader workers inherit the handlers: see training/preemption.py)
        self.stop = SignalStop(self.run_cfg.checkpoint.save_on_signal)
        if self.device.type == "cpu":
            # DeepSpeed picks its accelerator from what it finds (CUDA when present), not from this run's choice
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            host_memory.map_large_blocks()   # activations as their own mappings: training/host_memory.py

    def _groups(self) -> None:
        from megatron.core import parallel_state as ps

        from statex_dist.parallel import state
        from statex_dist.parallel.deepspeed_mpu import ensure_deepspeed_comm
        if "RANK" in os.environ and "LOCAL_RANK" in os.environ and self.device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if "RANK" not in os.environ:
            os.environ.setdefault("LOCAL_RANK", "0")  # debug mode: DeepSpeed asks for it even in a world of one
        p = self.run_cfg.parallel
        state.initialize(p.tp, p.pp, p.cp)
        ensure_deepspeed_comm()
        torch.manual_seed(self.run_cfg.seed)
        self.rank = dist.get_rank()
        self.tp_rank, self.dp, self.dp_rank = state.tp_rank(), ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        # the ranks that hold the same weights and optimizer partition layout: DP x CP (one of them writes)
        self.dp_cp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
        self.stage = ps.get_pipeline_model_parallel_rank()
        self.log(self.checked.first_line(self.run_cfg, dist.get_world_size(), dist.get_backend()))
        self.log(self.checked.tokens_line(self.run_cfg, dist.get_world_size()))
        # DeepSpeed's own files, which only older checkpoints hold, restore only the layout that wrote them
        m = self.meta
        self.same_layout = bool(m is not None and m.get("deepspeed", True) and (
            m["layout"] == checkpoints.layout(self.run_cfg, dist.get_world_size()) if "layout" in m else
            (m["tp"], m["pp"], m["world_size"]) == (self.run_cfg.parallel.tp, self.run_cfg.parallel.pp,
                                                     dist.get_world_size())))

    def _model(self):
        from statex_dist.training.initial_weights import fill
        run_cfg, tp, pp = self.run_cfg, self.run_cfg.parallel.tp, self.run_cfg.parallel.pp
        self.pipeline = pp > 1
        if self.pipeline:
            from statex_dist.models.pipeline import pipeline_module
            model = pipeline_module(self.model_config, torch.float32, tp, pp,
                                    activation_checkpoint_interval=int(run_cfg.parallel.activation_checkpointing))
        else:
            model = build_model(self.model_config, dtype=torch.float32, init=False,
                                sequence_parallel=run_cfg.parallel.sequence_parallel)
            model.activation_checkpointing = run_cfg.parallel.activation_checkpointing
        if self.resume is not None and not self.same_layout:
            # the sharded weights, at any layout. Loaded before the engine exists, so ZeRO's partitions start
            # from these weights.
            ShardedCheckpoint(self.resume / "model").load_into(by_internal_name(model), self.tp_rank, tp)
        else:
            fill(model, self.source, self.tp_rank, tp)
        if self.device.type == "cuda":
            model.cuda()  # the current device, set per local rank in _groups
        return model

    def _engine(self, model) -> None:
        run_cfg = self.run_cfg
        self.trainable = sum(p.numel() for p in model.parameters())
        if run_cfg.optimizer.freeze_unexpanded:
            if not self.model_config.expanded_layers:
                raise ValueError("optimizer.freeze_unexpanded needs an expanded model (expansion.enabled or a "
                                 "StateX checkpoint)")
            self.trainable = optim.freeze_unexpanded(model, self.model_config.expanded_layers)
        opt = optim.adamw(model, run_cfg.optimizer)
        sched = optim.scheduler(opt, run_cfg.schedule, run_cfg.optimizer.lr)
        # the batch rule, for the DP this engine really has
        validate(run_cfg, world=dist.get_world_size())
        self.ds_config = ds_setup.deepspeed_config(run_cfg, self.dp, self.dtype)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        self.module = model
        self.engine = ds_setup.initialize_engine(model, opt, sched, self.ds_config, self.pipeline)
        if self.device.type == "cpu":
            host_memory.release_around_steps(self.engine)

    def _data(self) -> None:
        d = self.run_cfg.data
        self.loader = build_loader(d.train, dp_rank=self.dp_rank, dp_size=self.dp, micro_batch=d.micro_batch,
                                   seed=d.seed, workers=d.workers, shuffle_buffer=d.shuffle_buffer,
                                   position=self.data_position, global_batch=d.global_batch,
                                   virtual_readers=d.virtual_readers)
        self.batches = iter(self.loader)

    def _logging(self) -> None:
        self.writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            Path(self.run_cfg.logging.dir).mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(self.run_cfg.logging.dir)

    def _restore(self, resume: Path, meta: dict, same_layout: bool) -> None:
        """The layout-free optimizer state (training/optimizer_state.py; the weights were loaded in _model),
        the schedule advanced to the step, DeepSpeed's step counters and the data position; from a checkpoint
        written with DeepSpeed's own files at this layout, those files."""
        self.step = meta["step"]
        # the position is layout-free (statex_dist.data.pipeline): every DP rank of any layout takes it
        self.data_position = meta["data"]["0"]
        if same_layout:
            checkpoints.load(self.engine, resume)
            self.log(f"resumed from {resume} at step {self.step}: model, optimizer and schedule (DeepSpeed's "
                     f"files), and the data position")
            return
        for _ in range(meta["step"]):
            self.engine.lr_scheduler.step()
        # what engine.step counts; nothing numerical reads them, DeepSpeed's logs and monitors do
        self.engine.global_steps = meta["step"]
        self.engine.global_samples = meta["step"] * self.engine.train_batch_size()
        here = checkpoints.describe(checkpoints.layout(self.run_cfg, dist.get_world_size()))
        was = (checkpoints.describe(meta["layout"]) if "layout" in meta else
               f"TP={meta['tp']} PP={meta['pp']} on {meta['world_size']} ranks")
        how = f"at {here} as saved" if was == here else f"converted from {was} to {here}"
        if optimizer_state.saved(resume):
            optimizer_state.restore(self.engine, list(named_internal_parameters(self.module)), resume,
                                    self.tp_rank, self.run_cfg.parallel.tp, meta["optimizer"]["adam_step"])
            what = (f"weights, fp32 master weights and AdamW moments (step {meta['optimizer']['adam_step']}), "
                    f"schedule and data position")
        else:
            what = "weights, schedule and data position; this checkpoint holds no layout-free optimizer state, " \
                   "so AdamW's moments start afresh"
        self.log(f"resumed from {resume} at step {self.step}: {how}: {what}")

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(f"[statex-dist] {msg}", flush=True)

    # --- steps ------------------------------------------------------------------------------------
    def _micro(self):
        """This rank's part of the next micro-batch: its DP rows (the loader's), its CP segment of them."""
        b = next(self.batches)
        dev = self.device.type  # "cuda": the current device
        return context.segment(b["input_ids"]).to(dev), context.segment(b["labels"]).to(dev)

    def train_step(self) -> float:
        """One optimizer step (``gas`` micro-batches); returns the mean loss over DP (and CP) ranks: over all
        tokens of the step."""
        if self.pipeline:
            return float(self.engine.train_batch(data_iter=_PipeIter(self)))
        total = 0.0
        for _ in range(self.gas):
            ids, labels = self._micro()
            loss = self.engine(ids, labels=labels)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        from megatron.core import parallel_state as ps

        from statex_dist.parallel.state import collective_device
        group = ps.get_data_parallel_group(with_context_parallel=True)
        total = torch.as_tensor(total / self.gas).to(collective_device(group))
        dist.all_reduce(total, group=group)
        return float(total) / dist.get_world_size(group)

    def train(self) -> dict:
        run_cfg = self.run_cfg
        tokens_per_step = self.checked.tokens_per_step(run_cfg)
        self.log(f"{self.model_config.arch}: {self.source.description}; "
                 f"steps {self.step}..{run_cfg.schedule.total_steps}")
        losses = []
        t_last = time.time()
        while self.step < run_cfg.schedule.total_steps:
            with self.memory.phase(f"step{self.step + 1}", kind="step", activations=True):
                loss = self.train_step()
            self.step += 1
            losses.append(loss)
            now = time.time()
            dt, t_last = now - t_last, now
            if self.writer is not None:
                self._scalars(loss, tokens_per_step, dt)
            if self.step % run_cfg.logging.every == 0 or self.step == run_cfg.schedule.total_steps:
                self.log(f"step {self.step}/{run_cfg.schedule.total_steps} loss {loss:.4f} "
                         f"lr {self.engine.get_lr()[0]:.3e} {tokens_per_step / max(dt, 1e-9):,.0f} tok/s")
            saved = None
            if run_cfg.checkpoint.every and self.step % run_cfg.checkpoint.every == 0:
                saved = self.save()
            if run_cfg.eval.every and self.step % run_cfg.eval.every == 0:
                self.evaluate()
            stop = self.stop.agreed()
            if stop and self.step < run_cfg.schedule.total_steps:
                path = saved or self.save()
                self.log(f"stopped on {stop} after step {self.step}/{run_cfg.schedule.total_steps}: checkpoint {path} "
                         f"written; the same command (checkpoint.resume=auto) continues from it")
                return {"losses": losses, "step": self.step, "stopped": stop}
        if not run_cfg.checkpoint.every or self.step % run_cfg.checkpoint.every:
            self.save()
        if not run_cfg.eval.every or self.step % run_cfg.eval.every:
            self.evaluate()
        if self.writer is not None:
            self.writer.flush()
        return {"losses": losses, "step": self.step}

    def evaluate(self) -> dict:
        """The run's evaluations (statex_dist.eval) on every rank, batches split over DP; logged on rank 0.

        A pipeline stage has no ``model(ids) -> logits``: evaluate its checkpoints with
        ``python -m statex_dist.eval --ckpt .../model`` instead.
        """
        e, d = self.run_cfg.eval, self.run_cfg.data
        tasks = [t for t in e.tasks if t != "ppl" or d.valid]
        if self.pipeline or not tasks:
            return {}
        from megatron.core import parallel_state as ps

        model = self.engine if self.run_cfg.parallel.zero_stage == 3 else self.module  # ZeRO-3 holds the params
        with context.off():   # each rank of a CP group evaluates whole sequences (the same batches)
            results = evaluate(model, EvalConfig.from_run(self.run_cfg, tasks),
                               dp=(self.dp_rank, self.dp, ps.get_data_parallel_group()))
        self.last_eval = results
        if self.writer is not None:
            log_to_tensorboard(self.writer, results, self.step)
            self.log(f"eval step {self.step}: {summary_line({'model': results})}")
        return results

    def _scalars(self, loss: float, tokens_per_step: int, dt: float) -> None:
        w, s = self.writer, self.step
        w.add_scalar("train/loss", loss, s)
        w.add_scalar("train/lr", self.engine.get_lr()[0], s)
        gn = self.engine.get_global_grad_norm()
        if gn is not None:
            w.add_scalar("train/grad_norm", float(gn), s)
        # a step's tokens are shared by all GPUs of the job (TP and PP ranks work on the same tokens)
        per_gpu = tokens_per_step / max(dt, 1e-9) / dist.get_world_size()
        flops = train_flops_per_token(self.model_config) * per_gpu  # the whole model's, per GPU
        w.add_scalar("train/tokens_per_s", tokens_per_step / max(dt, 1e-9), s)
        w.add_scalar("train/tokens_per_s_per_gpu", per_gpu, s)
        w.add_scalar("train/tokens_seen", tokens_per_step * s, s)
        w.add_scalar("train/model_tflops_per_gpu", flops / 1e12, s)
        if self.device.type == "cuda":
            w.add_scalar("train/memory_gb", torch.cuda.max_memory_allocated() / 1e9, s)
            peak = _peak_flops(self.dtype)
            if peak:
                w.add_scalar("train/mfu", flops / peak, s)
        else:
            import resource
            w.add_scalar("train/memory_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, s)

    def save(self) -> Path:
        data_state = self.loader.state_dict()
        with self.memory.phase(f"save{self.step}", kind="save"):
            return checkpoints.save(self.engine, self.module, self.run_cfg, self.model_config, self.step,
                                    data_state, self.ckpt_dir, self.run_cfg.checkpoint.keep, self.tp_rank,
                                    self.run_cfg.parallel.tp, self.run_cfg.parallel.pp, self.stage, self.dp_cp_rank,
                                    hf=self.source.hf)


# dense peak FLOP/s per GPU by card name (the vendors' data sheets, without sparsity)
_PEAKS = {"H100": {torch.bfloat16: 989e12, torch.float32: 67e12}, "H200": {torch.bfloat16: 989e12, torch.float32: 67e12},
          "A100": {torch.bfloat16: 312e12, torch.float32: 19.5e12}}


def _peak_flops(dtype) -> Optional[float]:
    name = torch.cuda.get_device_name()
    return next((p.get(dtype) for k, p in _PEAKS.items() if k in name), None)


class _PipeIter:
    """The pipeline engine's data iterator: (input_ids, labels) per micro-batch."""

    def __init__(self, run: Run):
        self.run = run

    def __iter__(self):
        return self

    def __next__(self):
        return self.run._micro()


EXAMPLE = """example:
  DEBUG=1 bash launch/train.sh configs/cpu-gla-tiny.yaml optimizer.lr=3e-4 schedule.total_steps=100
  python -m statex_dist.train configs/cpu-gla-tiny.yaml data.seq_len=256 --print-config

run-config keys (in the YAML file as sections, on the command line as section.key=value):
"""


def parser() -> "argparse.ArgumentParser":
    ap = Parser(prog="statex_dist.train", description=__doc__, epilog=EXAMPLE + key_table())
    ap.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML run config (configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", metavar="KEY.SUB=VALUE",
                    help="overrides of the file's values, typed as YAML (optimizer.lr=3e-4, eval.tasks=[ppl])")
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved run config as YAML and exit without starting anything")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    # launch/train.sh, once before the launcher: every check that needs no peers; prints the process count
    ap.add_argument("--preflight", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parser().parse_intermixed_args(argv)
        if args.config and "=" in args.config:  # no YAML file: overrides only
            args.overrides.insert(0, args.config)
            args.config = None
        run_cfg = load_run_config(args.config, args.overrides)
        if args.print_config:
            print(dump(run_cfg), end="")
            return 0
        if args.preflight:
            return _preflight(args, run_cfg)
        run = Run(run_cfg)
    except EXPECTED as e:  # only set-up: an error inside the steps is a bug and keeps its traceback
        return fail("statex_dist.train", e)
    try:
        out = run.train()
    except (ShardError, CheckpointWriteError) as e:  # met mid-run: a corrupt shard, a disk that filled up
        return fail("statex_dist.train", e)
    if out.get("stopped"):
        return 128 + signal_number(out["stopped"])   # the shell's code for a process ended by that signal
    run.log(f"done: {out['step']} steps, final loss {out['losses'][-1]:.4f}" if out["losses"] else "done: 0 steps")
    return 0


def _preflight(args, run_cfg: RunConfig) -> int:
    """The launcher's check: the process count on its last stdout line (``$NPROC``, else one per GPU)."""
    from statex_dist.training.preflight import preflight
    world = os.environ.get("WORLD_SIZE", "")
    if not world.isdigit():
        world = select(run_cfg.parallel.device).processes
        run_cfg = load_run_config(args.config, args.overrides, world=world)  # the batch rule for that many
    preflight(run_cfg, int(world))
    print(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
