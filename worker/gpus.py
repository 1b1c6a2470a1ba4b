"""GPU inventory of this host, for the worker that leases GPUs to trainers.

Sources, in order: simulated GPUs when asked for; NVML through `pynvml` (the package
nvidia-ml-py); the `nvidia-smi` command when pynvml is missing or NVML will not start; else
no GPUs at all. No NVIDIA driver is a normal state (a CPU-only box), never an exception.

This module imports neither TensorFlow nor anything from app/ or Celery: the worker imports
it, and scripts/check_gpus.py runs it on a bare GPU machine. Process groups are read by
worker/procfs.py.

Indices: `GpuInfo.index` is NVML's index, which is PCI bus order. CUDA numbers devices
fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, so the supervisor starts every trainer
with CUDA_DEVICE_ORDER=PCI_BUS_ID; then CUDA's index and NVML's agree. The value of the
trainer's CUDA_VISIBLE_DEVICES comes from `cuda_visible_devices`, which prefers UUIDs,
which do not depend on the order at all.

Foreign processes: a GPU is busy with someone else's work when NVML lists a PID on it that
is not in one of our trainers' process groups (each trainer leads its own group). Caveat:
inside a container without the host's PID namespace NVML reports host PIDs (or none at
all), which match nothing in our /proc; then our own trainers look foreign, or foreign
work is invisible. Run the worker with the host's PID namespace (`pid: host`) where
foreign detection matters.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger(__name__)

SIMULATED_NAME = "Simulated GPU (CPU logical device)"
NVIDIA_SMI_TIMEOUT_SECONDS = 10.0
_MIB = 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True)
class GpuInfo:
    index: int  # NVML index = PCI bus order (see the module's docstring)
    name: str
    uuid: str | None
    memory_total_mib: int | None
    memory_used_mib: int | None
    utilization_percent: int | None
    process_pids: tuple[int, ...]  # PIDs with a compute or graphics context on this GPU
    simulated: bool = False


def discover(simulated: int = 0, *, use_nvml: bool = True) -> tuple[list[GpuInfo], str]:
    """The GPUs this worker may use, and the source: simulated, nvml, nvidia-smi or none.

    Real GPUs are limited to the worker's own CUDA_VISIBLE_DEVICES, if set, keeping their
    NVML index. `use_nvml=False` skips NVML (to check the nvidia-smi fallback).
    """
    if simulated > 0:
        return [_simulated_gpu(i) for i in range(simulated)], "simulated"
    gpus = _discover_nvml() if use_nvml else None
    source = "nvml"
    if gpus is None:
        gpus, source = _discover_nvidia_smi(), "nvidia-smi"
    if gpus is None:
        return [], "none"
    return _visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES")), source


def cuda_visible_devices(gpus: list[GpuInfo]) -> str:
    """CUDA_VISIBLE_DEVICES for a trainer leased these GPUs ("" = no GPU visible).

    Simulated GPUs are CPU devices, so the trainer must see no real GPU. UUIDs when all are
    known (they survive any device order), else NVML indices, which need the trainer's
    CUDA_DEVICE_ORDER=PCI_BUS_ID.
    """
    real = [gpu for gpu in gpus if not gpu.simulated]
    if all(gpu.uuid for gpu in real):
        return ",".join(str(gpu.uuid) for gpu in real)
    return ",".join(str(gpu.index) for gpu in real)


def foreign_pids(gpu: GpuInfo, own_pids: set[int]) -> list[int]:
    """PIDs on this GPU that are not ours (see the module's docstring on containers)."""
    return sorted(pid for pid in gpu.process_pids if pid not in own_pids)


def is_foreign_busy(gpu: GpuInfo, own_pids: set[int]) -> bool:
    return bool(foreign_pids(gpu, own_pids))


def _simulated_gpu(i: int) -> GpuInfo:
    return GpuInfo(
        index=i,
        name=SIMULATED_NAME,
        uuid=f"SIM-{i}",
        memory_total_mib=None,
        memory_used_mib=None,
        utilization_percent=None,
        process_pids=(),
        simulated=True,
    )


_said: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.info(message)


def _discover_nvml() -> list[GpuInfo] | None:
    """None when NVML is unusable (no pynvml, no driver), so the caller falls back."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError) as exc:
        # Said once per process: the worker rediscovers at every heartbeat.
        _log_once(f"NVML unavailable ({exc}); trying nvidia-smi")
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            except pynvml.NVMLError as exc:  # e.g. a GPU fallen off the bus: not leasable
                log.warning("skipping GPU %d: %s", index, exc)
                continue
            gpus.append(_nvml_gpu(pynvml, index, handle))
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("NVML failed (%s); trying nvidia-smi", exc)
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _nvml_gpu(pynvml: Any, index: int, handle: Any) -> GpuInfo:
    # One field NVML cannot give (not supported on this GPU, no permission) must not hide
    # the GPU: that field alone becomes None or ().
    def field(call: Callable[[], _T], default: _T) -> _T:
        try:
            return call()
        except pynvml.NVMLError:
            return default

    memory = field(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle), None)
    utilization = field(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle), None)
    pids: set[int] = set()
    for running in (
        pynvml.nvmlDeviceGetComputeRunningProcesses,
        pynvml.nvmlDeviceGetGraphicsRunningProcesses,
    ):
        processes: list[Any] = field(partial(running, handle), [])
        pids.update(int(process.pid) for process in processes)
    uuid = field(lambda: pynvml.nvmlDeviceGetUUID(handle), None)
    return GpuInfo(
        index=index,
        name=_text(field(lambda: pynvml.nvmlDeviceGetName(handle), "unknown")),
        uuid=_text(uuid) if uuid is not None else None,
        memory_total_mib=int(memory.total) // _MIB if memory is not None else None,
        memory_used_mib=int(memory.used) // _MIB if memory is not None else None,
        utilization_percent=int(utilization.gpu) if utilization is not None else None,
        process_pids=tuple(sorted(pids)),
    )


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else value


def _discover_nvidia_smi() -> list[GpuInfo] | None:
    """None when there is no nvidia-smi or it fails (no driver loaded)."""
    rows = _nvidia_smi(
        "--query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu",
        "--format=csv,noheader,nounits",
    )
    if rows is None:
        return None
    # Only compute apps can be queried this way; graphics contexts are not listed.
    pids_by_uuid: dict[str, set[int]] = {}
    for row in _nvidia_smi("--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader") or []:
        if len(row) >= 2 and row[1].isdigit():
            pids_by_uuid.setdefault(row[0], set()).add(int(row[1]))
    gpus = []
    for row in rows:
        if len(row) < 6 or not row[0].isdigit():
            continue
        uuid = _smi_value(row[2])
        gpus.append(
            GpuInfo(
                index=int(row[0]),
                name=row[1],
                uuid=uuid,
                memory_total_mib=_smi_int(row[3]),
                memory_used_mib=_smi_int(row[4]),
                utilization_percent=_smi_int(row[5]),
                process_pids=tuple(sorted(pids_by_uuid.get(uuid or "", ()))),
            )
        )
    return gpus


def _nvidia_smi(*args: str) -> list[list[str]] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_SECONDS,  # a wedged driver can hang nvidia-smi
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi %s failed: %s", args[0], exc)
        return None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return [[cell.strip() for cell in row] for row in csv.reader(lines, skipinitialspace=True)]


def _smi_value(cell: str) -> str | None:
    # "[N/A]", "[Not Supported]", "[Insufficient Permissions]" ... mean "no value".
    return None if not cell or cell.startswith("[") else cell


def _smi_int(cell: str) -> int | None:
    value = _smi_value(cell)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _visible(gpus: list[GpuInfo], spec: str | None) -> list[GpuInfo]:
    """The GPUs named by CUDA_VISIBLE_DEVICES, in its order, keeping their NVML index.

    Like CUDA: unset means all; "" or "-1" means none; entries are indices (read as PCI
    order, see the module's docstring) or "GPU-..." UUIDs or unique prefixes of them; the
    first entry that names no GPU ends the list. MIG instances are not modelled.
    """
    if spec is None:
        return gpus
    chosen: list[GpuInfo] = []
    for raw in spec.split(","):
        token = raw.strip()
        if token.lstrip("-").isdigit():
            matches = [gpu for gpu in gpus if gpu.index == int(token)]
        else:
            matches = [
                gpu
                for gpu in gpus
                if token and gpu.uuid and gpu.uuid.lower().startswith(token.lower())
            ]
        if len(matches) != 1:
            break
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen
