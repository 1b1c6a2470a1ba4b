#!/usr/bin/env python3
"""Check worker.gpus on a real GPU machine; prints one JSON object a line, exits 1 on a failure.

Run from anywhere with a Python that has PyTorch: `python scripts/check_gpus.py`. Installs
nothing: the repo root goes on sys.path for `worker`, and a carried nvidia-ml-py wheel in
.gpucheck/ (pure Python, importable as a zip) goes first on sys.path for `pynvml`. On a box
without an NVIDIA driver it reports ([], "none") and skips the GPU checks.

Checks: (1) discover() through NVML; (2) the nvidia-smi fallback agrees; (3) a PyTorch child
holding ~2 GiB on the first GPU is foreign to nobody-owns-it but not to its own process
group; (4) cuda_visible_devices() gives a child exactly that GPU, and "" gives it none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _wheel in sorted((ROOT / ".gpucheck").glob("nvidia_ml_py-*.whl")):
    sys.path.insert(0, str(_wheel))

from worker import gpus, procfs  # noqa: E402

HOLD_GIB = 2
failures: list[str] = []


def emit(check: str, ok: bool | None, **data: Any) -> None:
    if ok is False:
        failures.append(check)
    print(json.dumps({"check": check, "ok": ok, **data}, default=str), flush=True)


def child_env(visible: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def check_foreign(gpu0: gpus.GpuInfo) -> None:
    code = (
        "import time, torch\n"
        f"x = torch.empty({HOLD_GIB} * 1024**3, dtype=torch.uint8, device='cuda')\n"
        "torch.cuda.synchronize()\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        env=child_env(gpus.cuda_visible_devices([gpu0])),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # leads its own process group, as our trainers do
    )
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 180)
        line = holder.stdout.readline().strip() if ready else ""
        if line != "ready":
            emit("foreign", False, error=f"holder did not start (exit {holder.poll()})")
            return
        seen: gpus.GpuInfo | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found, _ = gpus.discover()
            seen = next((g for g in found if g.index == gpu0.index), None)
            if seen is not None and holder.pid in seen.process_pids:
                break
            time.sleep(0.5)
        if seen is None or holder.pid not in seen.process_pids:
            emit(
                "foreign",
                False,
                error="NVML never listed the holder's PID (another PID namespace?)",
                holder_pid=holder.pid,
                nvml_pids=seen.process_pids if seen else None,
            )
            return
        own = procfs.pids_in_process_groups({holder.pid})
        foreign_to_nobody = gpus.foreign_pids(seen, set())
        foreign_to_owner = gpus.foreign_pids(seen, own)
        emit(
            "foreign",
            holder.pid in foreign_to_nobody and holder.pid not in foreign_to_owner,
            holder_pid=holder.pid,
            nvml_pids=seen.process_pids,
            memory_used_mib=seen.memory_used_mib,
            own_pids=sorted(own),
            foreign_with_no_own=foreign_to_nobody,
            foreign_with_own=foreign_to_owner,
            is_foreign_busy_with_own=gpus.is_foreign_busy(seen, own),
        )
        smi, source = gpus.discover(use_nvml=False)
        smi0 = next((g for g in smi if g.index == gpu0.index), None)
        emit(
            "foreign_nvidia_smi",
            source == "nvidia-smi" and smi0 is not None and holder.pid in smi0.process_pids,
            source=source,
            pids=smi0.process_pids if smi0 else None,
        )
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def torch_sees(visible: str) -> dict[str, Any]:
    code = (
        "import json, torch\n"
        "n = torch.cuda.device_count()\n"
        "print(json.dumps({'count': n, 'name': torch.cuda.get_device_name(0) if n else None}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(visible),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check_visible_devices(gpu0: gpus.GpuInfo) -> None:
    value = gpus.cuda_visible_devices([gpu0])
    one = torch_sees(value)
    emit(
        "cuda_visible_devices",
        one.get("count") == 1 and one.get("name") == gpu0.name,
        value=value,
        torch=one,
        nvml_name=gpu0.name,
    )
    none = torch_sees("")
    emit("cuda_visible_devices_empty", none.get("count") == 0, value="", torch=none)

    # The worker's own CUDA_VISIBLE_DEVICES limits what discover() offers.
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        seen = {}
        for spec in (str(gpu0.index), (gpu0.uuid or "")[:12], ""):
            os.environ["CUDA_VISIBLE_DEVICES"] = spec
            seen[spec] = [g.index for g in gpus.discover()[0]]
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    expected = {str(gpu0.index): [gpu0.index], (gpu0.uuid or "")[:12]: [gpu0.index], "": []}
    emit("worker_cuda_visible_devices", seen == expected, discovered_indices=seen)


def main() -> int:
    try:
        import pynvml

        nvml_from: str | None = pynvml.__file__
    except ImportError:
        nvml_from = None
    found, source = gpus.discover()
    emit(
        "discover_nvml",
        source == "nvml" if found else None,
        source=source,
        pynvml=nvml_from,
        gpus=[asdict(g) for g in found],
    )
    if not found:
        print(
            json.dumps(
                {
                    "check": "skip",
                    "message": f"no NVIDIA GPU here (source={source}): GPU checks skipped",
                }
            ),
            flush=True,
        )
        return 0

    smi, smi_source = gpus.discover(use_nvml=False)

    def key(g: gpus.GpuInfo) -> tuple[object, ...]:
        return (g.index, g.name, g.uuid, g.memory_total_mib)

    emit(
        "discover_nvidia_smi",
        smi_source == "nvidia-smi" and [key(g) for g in smi] == [key(g) for g in found],
        source=smi_source,
        gpus=[asdict(g) for g in smi],
    )

    # Only the children import torch (slow); fail clearly here if it is missing.
    if importlib.util.find_spec("torch") is None:
        emit("torch", False, error=f"{sys.executable} has no PyTorch: checks 3 and 4 not run")
    else:
        gpu0 = found[0]
        check_foreign(gpu0)
        check_visible_devices(gpu0)

    print(json.dumps({"check": "summary", "ok": not failures, "failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
