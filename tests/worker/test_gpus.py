"""worker.gpus against stand-ins: a fake `pynvml` module and a fake `nvidia-smi` on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker import gpus, procfs
from worker.gpus import GpuInfo

MIB = 1024 * 1024
UUID0 = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
UUID1 = "GPU-1b2c3d4e-0000-1111-2222-333344445555"


class NVMLError(Exception):
    pass


@dataclass
class FakeDevice:
    name: str | bytes
    uuid: str | bytes
    total: int = 80 * 1024 * MIB
    used: int = 512 * MIB
    util: int = 7
    compute_pids: list[int] = field(default_factory=list)
    graphics_pids: list[int] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)  # names of calls that raise NVMLError


def fake_pynvml(devices: list[FakeDevice], *, init_error: bool = False) -> types.ModuleType:
    """The part of pynvml that worker.gpus uses; `calls` records init/shutdown."""
    module = types.ModuleType("pynvml")
    calls: list[str] = []

    def on(handle: FakeDevice, call: str, value: object) -> object:
        if call in handle.failing:
            raise NVMLError(f"{call} not supported")
        return value

    def init() -> None:
        calls.append("init")
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def procs(pids: list[int]) -> list[object]:
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=MIB) for pid in pids]

    module.__dict__.update(
        NVMLError=NVMLError,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: devices[i],
        nvmlDeviceGetName=lambda h: on(h, "name", h.name),
        nvmlDeviceGetUUID=lambda h: on(h, "uuid", h.uuid),
        nvmlDeviceGetMemoryInfo=lambda h: on(
            h, "memory", types.SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)
        ),
        nvmlDeviceGetUtilizationRates=lambda h: on(
            h, "util", types.SimpleNamespace(gpu=h.util, memory=0)
        ),
        nvmlDeviceGetComputeRunningProcesses=lambda h: on(h, "procs", procs(h.compute_pids)),
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: on(h, "procs", procs(h.graphics_pids)),
    )
    return module


@pytest.fixture(autouse=True)
def no_host_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the host's NVML nor its nvidia-smi, nor its CUDA_VISIBLE_DEVICES, leak in."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` -> ImportError
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def use_nvml(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", module)


def use_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpus_csv: str, apps_csv: str = ""
) -> None:
    """A stand-in nvidia-smi, first on PATH, answering the two queries worker.gpus makes."""
    bin_dir = tmp_path / "smi-bin"
    bin_dir.mkdir()
    (bin_dir / "gpus.csv").write_text(textwrap.dedent(gpus_csv).lstrip())
    (bin_dir / "apps.csv").write_text(textwrap.dedent(apps_csv).lstrip())
    script = bin_dir / "nvidia-smi"
    # Shell builtins only: PATH holds no /bin here.
    script.write_text(
        f"#!/bin/sh\n"
        f'case "$1" in\n'
        f"  --query-gpu=index,name,uuid,memory.total,memory.used,utilization.gpu)"
        f" f=gpus.csv;;\n"
        f"  --query-compute-apps=gpu_uuid,pid) f=apps.csv;;\n"
        f"  *) echo unexpected >&2; exit 2;;\n"
        f"esac\n"
        f'while IFS= read -r line; do printf "%s\\n" "$line"; done < "{bin_dir}/$f"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def two_devices() -> list[FakeDevice]:
    return [
        FakeDevice(name="NVIDIA H100 80GB HBM3", uuid=UUID0, compute_pids=[4242]),
        FakeDevice(
            name=b"NVIDIA A100-SXM4-40GB",  # older pynvml: bytes
            uuid=UUID1.encode(),
            total=40 * 1024 * MIB,
            used=0,
            util=0,
            compute_pids=[17],
            graphics_pids=[17, 9],
        ),
    ]


def gpu(index: int, uuid: str | None, pids: tuple[int, ...] = ()) -> GpuInfo:
    return GpuInfo(index, "GPU", uuid, 1024, 0, 0, pids)


def test_nvml_discovery_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml(two_devices())
    use_nvml(monkeypatch, module)
    found, source = gpus.discover()
    assert source == "nvml"
    assert found == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", UUID0, 81920, 512, 7, (4242,)),
        GpuInfo(1, "NVIDIA A100-SXM4-40GB", UUID1, 40960, 0, 0, (9, 17)),
    ]
    assert module.calls == ["init", "shutdown"]


def test_nvml_field_errors_blank_that_field_only(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = two_devices()
    devices[0].failing = {"util", "procs"}
    devices[1].failing = {"memory", "uuid"}
    module = fake_pynvml(devices)
    use_nvml(monkeypatch, module)
    found, source = gpus.discover()
    assert source == "nvml"
    assert (found[0].utilization_percent, found[0].process_pids) == (None, ())
    assert found[0].memory_total_mib == 81920
    assert (found[1].memory_total_mib, found[1].memory_used_mib, found[1].uuid) == (None,) * 3
    assert found[1].process_pids == (9, 17)
    assert module.calls == ["init", "shutdown"]


def test_simulated_needs_no_driver() -> None:
    found, source = gpus.discover(simulated=2)
    assert source == "simulated"
    assert [g.uuid for g in found] == ["SIM-0", "SIM-1"]
    assert all(g.simulated and g.name == gpus.SIMULATED_NAME for g in found)
    assert all(g.memory_total_mib is None and g.process_pids == () for g in found)
    assert gpus.cuda_visible_devices(found) == ""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1", [1]),
        ("1,0", [1, 0]),
        (UUID1, [1]),
        ("GPU-8932f937", [0]),  # a unique prefix, as CUDA allows
        (f" {UUID1} , 0", [1, 0]),
        ("0,7,1", [0]),  # like CUDA: the first entry naming no GPU ends the list
        ("", []),
        ("-1", []),
        ("GPU-", []),  # ambiguous prefix names no single GPU
    ],
)
def test_cuda_visible_devices_filters_keeping_nvml_index(
    monkeypatch: pytest.MonkeyPatch, spec: str, expected: list[int]
) -> None:
    use_nvml(monkeypatch, fake_pynvml(two_devices()))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    found, _ = gpus.discover()
    assert [g.index for g in found] == expected


def test_nvml_init_error_falls_back_to_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = fake_pynvml(two_devices(), init_error=True)
    use_nvml(monkeypatch, module)
    use_nvidia_smi(
        monkeypatch,
        tmp_path,
        f"""
        0, NVIDIA H100 80GB HBM3, {UUID0}, 81559, 1024, 35
        1, NVIDIA H100 80GB HBM3, {UUID1}, 81559, 0, 0
        """,
        f"""
        {UUID0}, 4242
        {UUID0}, 4343
        """,
    )
    found, source = gpus.discover()
    assert source == "nvidia-smi"
    assert found == [
        GpuInfo(0, "NVIDIA H100 80GB HBM3", UUID0, 81559, 1024, 35, (4242, 4343)),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", UUID1, 81559, 0, 0, ()),
    ]
    assert module.calls == ["init"]  # nothing to shut down after a failed init


def test_nvidia_smi_not_available_fields_are_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_nvidia_smi(
        monkeypatch, tmp_path, "0, Tesla K80, [N/A], [N/A], [Not Supported], [Not Supported]\n"
    )
    found, source = gpus.discover()
    assert source == "nvidia-smi"
    assert found == [GpuInfo(0, "Tesla K80", None, None, None, None, ())]
    assert gpus.cuda_visible_devices(found) == "0"


def test_use_nvml_false_forces_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_nvml(monkeypatch, fake_pynvml(two_devices()))
    use_nvidia_smi(monkeypatch, tmp_path, f"0, NVIDIA H100 80GB HBM3, {UUID0}, 81559, 0, 0\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8932")
    assert gpus.discover(use_nvml=False) == (
        [GpuInfo(0, "NVIDIA H100 80GB HBM3", UUID0, 81559, 0, 0, ())],
        "nvidia-smi",
    )


def test_failing_nvidia_smi_means_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "broken-bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert gpus.discover() == ([], "none")


def test_neither_nvml_nor_nvidia_smi_means_no_gpus() -> None:
    assert gpus.discover() == ([], "none")


def test_nvml_without_driver_and_no_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    use_nvml(monkeypatch, fake_pynvml([], init_error=True))
    assert gpus.discover() == ([], "none")


def test_cuda_visible_devices_for_a_trainer() -> None:
    assert gpus.cuda_visible_devices([gpu(1, UUID1), gpu(0, UUID0)]) == f"{UUID1},{UUID0}"
    assert gpus.cuda_visible_devices([gpu(0, UUID0), gpu(3, None)]) == "0,3"
    assert gpus.cuda_visible_devices([]) == ""


def test_foreign_pids_are_those_outside_our_set() -> None:
    card = gpu(0, UUID0, pids=(10, 20, 30))
    assert gpus.foreign_pids(card, set()) == [10, 20, 30]
    assert gpus.foreign_pids(card, {10, 30}) == [20]
    assert gpus.is_foreign_busy(card, {10, 30})
    assert not gpus.is_foreign_busy(card, {10, 20, 30, 99})
    assert not gpus.is_foreign_busy(gpu(1, UUID1), set())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_our_trainer_process_group_is_not_foreign() -> None:
    # A stand-in trainer leading its own process group, with a child of its own (as a
    # trainer's data loader would be).
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(c.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert trainer.stdout is not None
        grandchild = int(trainer.stdout.readline())
        own = procfs.pids_in_process_groups({trainer.pid})
        assert {trainer.pid, grandchild} <= own
        assert os.getpid() not in own  # the test runner is in another group

        # NVML shows the trainer, its child, and someone else's process (this test's).
        card = gpu(0, UUID0, pids=(trainer.pid, grandchild, os.getpid()))
        assert gpus.foreign_pids(card, own) == [os.getpid()]
        assert gpus.is_foreign_busy(card, own)
        assert not gpus.is_foreign_busy(gpu(0, UUID0, pids=(trainer.pid, grandchild)), own)
        assert gpus.foreign_pids(card, set()) == sorted(card.process_pids)
    finally:
        os.killpg(trainer.pid, 9)
        trainer.wait()
    assert procfs.pids_in_process_groups(set()) == set()
