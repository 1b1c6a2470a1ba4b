"""Training throughput: the engine's step pipeline vs the seed recipe, on the same machine.

Each side runs in a fresh subprocess, measured the same way (a 3-step warm-up fit, then a
timed fit of --steps steps) on the same synthetic 32x32x3 data (uint8 from
numpy.random.default_rng(0), 10 classes) and the same batch, alternating engine and seed for
--pairs pairs so machine noise hits both alike. Prints one JSON line.

    python bench/train_throughput.py --pairs 5
    python bench/train_throughput.py --batch-size 256 --pairs 3
    python bench/train_throughput.py --engine-only --images 2048 --steps 20   # one side
    python bench/train_throughput.py --engine-only --batch-norm stock   # Keras' own BN layer

The seed side is shared/bench/seed_baseline.py (float64 arrays, ImageDataGenerator, one-hot
labels); it takes a batch of 64 x --gpus, so batch sizes that are not a multiple of 64 time
only the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GFLOP_PER_IMAGE = 1.41  # MiniGoogLeNet training (forward + backward), 32x32x3 input
WARMUP_STEPS = 3


def engine_only(
    images: int, steps: int, batch_size: int, precision: str, batch_norm: str
) -> dict[str, Any]:
    """Time the engine's own pipeline, model and compile settings in this process.

    `batch_norm="stock"` builds the model with Keras' own BatchNormalization instead of the
    engine's fused one, to measure what the fused kernel is worth.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    import keras
    import numpy as np
    import tensorflow as tf

    from app.core.spec import TrainingSpec, resolve_bn_momentum
    from worker.training import engine
    from worker.training.data import Dataset
    from worker.training.devices import setup_devices
    from worker.training.layers import FusedBatchNormalization
    from worker.training.models import build_model
    from worker.training.pipeline import build_pipelines

    gpus = 1 if tf.config.list_physical_devices("GPU") else 0
    config = TrainingSpec.model_validate(
        {"gpus": gpus, "batch_size": batch_size, "mixed_precision": precision}
    )
    setup = setup_devices(config)
    keras.mixed_precision.set_global_policy(setup.precision)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, (images,)).astype(np.int64)
    data = Dataset("bench", x, y, x[:batch_size], y[:batch_size], 10)
    global_batch = batch_size * setup.replicas
    # What a training run on these images would use ("auto"); it changes no op, only numbers.
    bn_momentum = resolve_bn_momentum(config, images)
    train = build_pipelines(data, global_batch, augment=True).train.repeat()
    with setup.strategy.scope():
        norm_layer = (
            keras.layers.BatchNormalization if batch_norm == "stock" else FusedBatchNormalization
        )
        model = build_model("minigooglenet", (32, 32, 3), 10, bn_momentum, norm_layer)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=config.lr, momentum=config.momentum),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=engine.STEPS_PER_EXECUTION,
        )
    model.fit(train, steps_per_epoch=WARMUP_STEPS, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)
    elapsed = time.perf_counter() - start
    return {
        "recipe": "engine",
        "batch": global_batch,
        "steps": steps,
        "seconds": round(elapsed, 3),
        "images_per_s": round(steps * global_batch / elapsed, 1),
        "precision": setup.precision,
        "batch_norm": batch_norm,
        "bn_momentum": bn_momentum,
        "devices": setup.devices,
    }


def _run_json(command: list[str]) -> dict[str, Any]:
    completed = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, check=False, timeout=1800
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def compare(args: argparse.Namespace) -> dict[str, Any]:
    engine_command = [
        sys.executable, __file__, "--engine-only", "--images", str(args.images),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--precision", args.precision, "--batch-norm", args.batch_norm,
    ]  # fmt: skip
    seed_path = Path(args.seed_baseline)
    if not seed_path.is_absolute():
        seed_path = (REPO / seed_path).resolve()
    run_seed = args.batch_size % 64 == 0
    seed_command = [
        sys.executable, str(seed_path), "--images", str(args.images), "--steps",
        str(args.steps), "--gpus", str(args.batch_size // 64),
    ]  # fmt: skip
    engine_rates: list[float] = []
    seed_rates: list[float] = []
    precision = None
    for _ in range(args.pairs):
        engine = _run_json(engine_command)
        engine_rates.append(engine["images_per_s"])
        precision = engine["precision"]
        if run_seed:
            seed_rates.append(_run_json(seed_command)["images_per_s"])
    ratios = [e / s for e, s in zip(engine_rates, seed_rates, strict=False)]
    engine_median = statistics.median(engine_rates)
    return {
        "bench": "train_throughput",
        "batch": args.batch_size,
        "batch_norm": args.batch_norm,
        "pairs": args.pairs,
        "steps": args.steps,
        "images": args.images,
        "precision": precision,
        "seed_precision": "float64 inputs, float32 model" if run_seed else None,
        "engine_images_per_s": engine_median,
        "seed_images_per_s": statistics.median(seed_rates) if seed_rates else None,
        "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
        "ratio_min": round(min(ratios), 3) if ratios else None,
        "ratio_max": round(max(ratios), 3) if ratios else None,
        "engine_gflop_per_s": round(engine_median * GFLOP_PER_IMAGE, 1),
        "engine_runs": engine_rates,
        "seed_runs": seed_rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--batch-size", type=int, default=64, help="batch per replica")
    parser.add_argument("--pairs", type=int, default=5, help="engine/seed pairs to alternate")
    parser.add_argument("--precision", default="auto", help="engine mixed precision setting")
    parser.add_argument(
        "--seed-baseline",
        default="../shared/bench/seed_baseline.py",
        help="the seed recipe script, relative to the repo root",
    )
    parser.add_argument(
        "--batch-norm",
        choices=("fused", "stock"),
        default="fused",
        help="the engine's fused BatchNormalization, or Keras' stock layer",
    )
    parser.add_argument("--engine-only", action="store_true", help="time the engine, once")
    args = parser.parse_args()
    if args.images < args.batch_size:
        parser.error("--images must be at least --batch-size")
    # The seed's generator is not repeated: with fewer images than the timed steps need,
    # Keras stops its fit early and the seed's figure would count steps it never ran.
    args.images = max(args.images, args.steps * args.batch_size)
    if args.engine_only:
        result = engine_only(
            args.images, args.steps, args.batch_size, args.precision, args.batch_norm
        )
    else:
        result = compare(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
