"""Stopping on a scheduler's warning: checkpoint, then exit (Megatron-LM's ``--exit-signal-handler``).

Slurm sends SIGTERM to every process of a job and SIGKILL after its grace period (30 s by default; ``sbatch
--signal=USR1@120`` asks for an earlier warning); DeepSpeed's launcher forwards a SIGTERM it receives to the
ranks (and their loader workers) and kills them 30 s later. The handler only records the signal: a rank
inside a collective or a checkpoint write must not stop there. After every step the ranks agree, by one
all-reduce over the world, whether any of them received one; if so every rank writes the checkpoint of that
same step and the run stops. The signal may reach some ranks, all of them, or only the launcher, and
at any moment of a step: the agreement makes each case end in the same complete checkpoint.

Loader workers are forked after the handlers are installed (``Run`` installs them first), so a SIGTERM
sent to the whole process group leaves them running until their rank is done with them.
"""
from __future__ import annotations

import signal
from typing import Optional, Sequence

import torch
import torch.distributed as dist

from statex_dist.run_config import signal_number


class SignalStop:
    """Records the first of ``names`` that arrives; :meth:`agreed` tells every rank the same answer."""

    def __init__(self, names: Sequence[str]):
        self.received: Optional[int] = None
        for name in names:
            signal.signal(signal_number(name), self._record)

    def _record(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def agreed(self) -> Optional[str]:
        """The signal any rank received (the highest number if several), on every rank; None if none."""
        # megatron-core (parallel.state) loads with the process groups, not with the command line
        from statex_dist.parallel.state import collective_device
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=collective_device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return signal.Signals(int(flag)).name if int(flag) else None
