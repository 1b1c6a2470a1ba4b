"""Choosing the devices, the tf.distribute strategy and the mixed-precision policy.

`setup_devices` must run before anything else touches TensorFlow's runtime: splitting the CPU
into logical devices and hiding GPUs are only possible before the runtime initialises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from app.core.spec import TrainingSpec

from .config import UserError

# Tensor cores for float16 start with Volta (compute capability 7.0); older GPUs run
# mixed_float16 slower than float32.
MIN_FLOAT16_CAPABILITY = (7, 0)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DeviceSetup:
    strategy: tf.distribute.Strategy
    devices: list[str]
    precision: str  # the Keras dtype policy name: float32, mixed_bfloat16, mixed_float16
    kind: str  # "gpu" or "cpu"

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)


def setup_devices(config: TrainingSpec) -> DeviceSetup:
    """Configure TensorFlow for `config` and return the strategy to build the model under."""
    gpus = tf.config.list_physical_devices("GPU")
    if config.gpus > 0:
        if len(gpus) < config.gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = "unset" if visible is None else repr(visible)
            raise UserError(
                f"needs {config.gpus} GPUs, {len(gpus)} visible (CUDA_VISIBLE_DEVICES={shown}); "
                "use --gpus 0 to train on the CPU"
            )
        chosen = gpus[: config.gpus]
        # Hide the others so TensorFlow neither allocates memory on them nor places ops there:
        # they may be leased to another job.
        tf.config.set_visible_devices(chosen, "GPU")
        for gpu in chosen:
            # Grow instead of grabbing the whole card up front, so nvidia-smi shows real use.
            tf.config.experimental.set_memory_growth(gpu, True)
        devices = [f"/gpu:{index}" for index in range(config.gpus)]
        precision = _gpu_precision(config.mixed_precision, chosen)
        kind = "gpu"
    else:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        replicas = max(config.cpu_replicas, 1)
        if replicas > 1:
            _split_cpu(replicas)
        devices = [f"/cpu:{index}" for index in range(replicas)]
        precision = _cpu_precision(config.mixed_precision)
        kind = "cpu"
    strategy = tf.distribute.MirroredStrategy(devices=devices, **_cross_device_ops(kind))
    if strategy.num_replicas_in_sync != len(devices):
        raise RuntimeError(
            f"MirroredStrategy has {strategy.num_replicas_in_sync} replicas, asked for "
            f"{len(devices)} ({', '.join(devices)})"
        )
    return DeviceSetup(strategy=strategy, devices=devices, precision=precision, kind=kind)


def _split_cpu(replicas: int) -> None:
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError as error:
        # Raised when the runtime is already initialised: a bug in the caller's ordering.
        raise RuntimeError(
            f"cannot split the CPU into {replicas} devices: TensorFlow was initialised too early"
        ) from error
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) != replicas:
        raise RuntimeError(f"asked for {replicas} logical CPUs, TensorFlow made {len(logical)}")


def _cross_device_ops(kind: str) -> dict[str, tf.distribute.CrossDeviceOps]:
    # NCCL exists only for GPUs; on CPU replicas all-reduce by gathering on one device.
    if kind == "cpu":
        return {"cross_device_ops": tf.distribute.ReductionToOneDevice()}
    return {}


def _gpu_precision(requested: str, gpus: list[tf.config.PhysicalDevice]) -> str:
    if requested != "auto":
        return _policy_name(requested)
    capabilities = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    if capabilities and min(capabilities) >= MIN_FLOAT16_CAPABILITY:
        return "mixed_float16"
    return "float32"


def _cpu_precision(requested: str) -> str:
    if requested != "auto":
        return _policy_name(requested)
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bfloat16 natively (AMX or AVX-512 BF16), per /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: stay on the safe side
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in CPU_BF16_FLAGS)
    return False


def _policy_name(precision: str) -> str:
    return {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[
        precision
    ]
