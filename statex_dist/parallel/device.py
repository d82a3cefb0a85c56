"""The run's device, decided once per process and read by everything that depends on it.

``parallel.device`` (``auto`` | ``cuda`` | ``cpu``) picks it; :func:`decide` turns the request into a
:class:`Device` the first time it is asked, and every later reader (the process-group backend, the default
dtype, the model's placement, the batches, the launcher's process count, the evaluation command) gets the
same answer from :func:`current`. ``auto`` is ``cuda`` when torch can use a GPU.

Nothing falls back quietly: when ``nvidia-smi -L`` lists GPUs that torch cannot use (a CPU wheel, or a CUDA
build newer than the driver), or ``cuda`` is asked on a machine without one, :func:`decide` raises
:class:`DeviceError` naming what torch was built for, what the driver offers and the fix; command lines print
it as one line (``statex_dist.cli_errors``).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal, Optional

import torch

Request = Literal["auto", "cuda", "cpu"]
REQUESTS = ("auto", "cuda", "cpu")


class DeviceError(ValueError):
    """The requested device cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Device:
    type: Literal["cuda", "cpu"]
    gpus: int               # GPUs torch can use on this node (0 on the CPU)
    name: str               # "4 x NVIDIA H100 80GB HBM3" or "cpu"

    @property
    def backend(self) -> str:
        """torch.distributed's backend for a launched job (debug mode's world of one is always gloo)."""
        return "nccl" if self.type == "cuda" else "gloo"

    @property
    def default_dtype(self) -> torch.dtype:
        """``model.dtype: auto``: bf16 on GPUs (their tensor cores), fp32 on the CPU (no bf16 speed-up there)."""
        return torch.bfloat16 if self.type == "cuda" else torch.float32

    @property
    def processes(self) -> int:
        """The launcher's default process count on one node: one per GPU, else one."""
        return max(self.gpus, 1)

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cuda", local_rank) if self.type == "cuda" else torch.device("cpu")


@dataclass(frozen=True)
class DriverReport:
    """What the machine offers, read from ``nvidia-smi`` (empty where it is absent or finds no driver)."""
    gpus: tuple[str, ...]           # the lines of ``nvidia-smi -L``
    driver: Optional[str] = None    # driver version
    cuda: Optional[str] = None      # the highest CUDA version the driver supports


def _nvidia_smi(*args: str) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout if out.returncode == 0 else ""


def driver_report() -> DriverReport:
    gpus = tuple(ln.strip() for ln in _nvidia_smi("-L").splitlines() if ln.strip().startswith("GPU "))
    if not gpus:
        return DriverReport(())
    header = _nvidia_smi()
    driver = re.search(r"Driver Version:\s*([\d.]+)", header)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return DriverReport(gpus, driver and driver.group(1), cuda and cuda.group(1))


def torch_build() -> str:
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda}" if torch.version.cuda
            else f"torch {torch.__version__} is a CPU build")


def _cuda_unusable(report: DriverReport) -> str:
    """Why torch cannot use this machine's GPUs, and the fix (one sentence each)."""
    offers = (f"the driver {report.driver or '(version unknown)'} offers CUDA {report.cuda or '(unknown)'}"
              if report.gpus else "nvidia-smi finds no GPU driver")
    fix = ("install the torch build for the driver's CUDA version (README: 'GPU machines': "
           "TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXYZ bash install.sh)")
    return f"{torch_build()}, {offers}; {fix}"


def decide(request: str = "auto") -> Device:
    """The device for ``parallel.device=request``; raises :class:`DeviceError` instead of a quiet CPU run."""
    if request not in REQUESTS:
        raise DeviceError(f"parallel.device={request!r}: expected one of {'|'.join(REQUESTS)}")
    if request == "cpu":
        return Device("cpu", 0, "cpu")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return Device("cuda", n, f"{n} x {torch.cuda.get_device_name(0)}")
    report = driver_report()
    if request == "cuda":
        raise DeviceError(f"parallel.device=cuda but torch cannot use a GPU here: {_cuda_unusable(report)}; "
                          f"or set parallel.device=cpu")
    if report.gpus:  # auto on a GPU machine whose GPUs torch cannot use: training there on the CPU is a mistake
        raise DeviceError(f"nvidia-smi lists {len(report.gpus)} GPU(s) ({report.gpus[0]}) but torch cannot use "
                          f"them: {_cuda_unusable(report)}; or set parallel.device=cpu to train on the CPU")
    return Device("cpu", 0, "cpu")


_decided: dict[str, Device] = {}
_current: Optional[Device] = None


def select(request: str = "auto") -> Device:
    """Decide the device for ``request`` (once per process: ``nvidia-smi`` is asked at most once) and make it
    the one :func:`current` returns."""
    global _current
    if request not in _decided:
        _decided[request] = decide(request)
    _current = _decided[request]
    return _current


def current() -> Device:
    """The selected device; ``auto``'s when nothing selected one yet (debug mode, ``load_model``)."""
    return _current if _current is not None else select("auto")


def install_report() -> str:
    """The line ``install.sh`` ends with: which device runs will use, or why the GPUs cannot be used."""
    try:
        d = decide("auto")
    except DeviceError as e:
        return f"WARNING: {e}"
    if d.type == "cuda":
        return f"device: {d.name}, {torch_build()}"
    return f"device: cpu ({torch_build()}; no GPU listed by nvidia-smi)"
