"""A stand-in for `python -m worker.training` in tests: it speaks the trainer's JSON-line
protocol (worker/training/events.py) in milliseconds, without TensorFlow. Stdlib only; it
never imports the project, so it runs as a plain script:

    python tests/fake_trainer.py --steps started epoch:1 epoch:2 finished \\
        --json --exit-on-stdin-eof --config FILE --workdir DIR

Steps, done in order:

    started               the `started` event (replicas from --config, as the real one)
    epoch:N               a `checkpoint` event for epoch N, then its `epoch` record
    finished              the `finished` event
    failed:REASON[:MSG]   a `failed` event (REASON: user_error, nan_loss, oom, internal)
    garbage:TEXT          TEXT as a line on stdout that is not JSON
    log:TEXT              TEXT as a line on stderr (the job's train.log)
    sleep:SECONDS, hang   sleep that long, or forever
    exit:CODE             exit at once with CODE
    kill                  SIGKILL itself, as the kernel's OOM killer would
    child                 start a grandchild in our process group that sleeps forever
    env                   print the TRAINYARD_* and PG* variables it was given on stderr
    ignore-term           ignore SIGTERM from now on, as a stuck trainer (a child started
                          later inherits it); only SIGKILL ends it then

After the last step it exits 0. The flags the supervisor appends are accepted: with
--exit-on-stdin-eof it exits 1 as soon as stdin closes, like the real trainer; --config is
read for the replica and epoch counts; --workdir (which marks the trainer's processes as
the job's) names the checkpoint paths; --json is ignored. SIGTERM ends it (Python's
default) unless ignore-term.

The helpers below the script are for the tests that drive it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the script itself imports nothing of the project
    from worker.procfs import ProcessInfo

FAKE = Path(__file__).resolve()


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"event": kind, **fields}), flush=True)


def replicas_of(config: dict[str, Any]) -> int:
    """As the real trainer: the leased GPUs, or CPU replicas on a simulated-GPU host."""
    if config.get("gpus", 1) == 0:
        return max(1, int(config.get("cpu_replicas") or 1))
    return int(config.get("gpus", 1))


def exit_on_stdin_eof() -> None:
    def watch() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="*", default=[])
    parser.add_argument("--config")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    args, _ = parser.parse_known_args()  # --json and whatever else the supervisor appends
    if args.exit_on_stdin_eof:
        exit_on_stdin_eof()
    config = json.loads(Path(args.config).read_text()) if args.config else {}
    replicas = replicas_of(config)
    for step in args.steps:
        name, _, value = step.partition(":")
        if name == "started":
            emit(
                "started",
                replicas=replicas,
                devices=[f"/cpu:{i}" for i in range(replicas)],
                precision="float32",
                params=1234,
                epochs=config.get("epochs", 1),
                initial_epoch=0,
                bn_momentum=0.9,
                steps_per_epoch=4,
                global_batch=32 * replicas,
                train_images=128,
                test_images=32,
                workdir=str(Path(args.workdir).resolve()),
            )
        elif name == "epoch":
            epoch = int(value)
            path = Path(args.workdir, "checkpoints", f"epoch-{epoch:04d}").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"fake checkpoint")  # a file of the trainer's, as the real one
            emit("checkpoint", epoch=epoch, path=str(path))
            emit(
                "epoch",
                epoch=epoch,
                loss=1.0 / epoch,
                accuracy=0.5,
                val_loss=1.1 / epoch,
                val_accuracy=0.4,
                lr=0.005,
                seconds=0.01,
                replicas=replicas,
                replayed=False,
            )
        elif name == "env":  # what a trainer is given of the worker's settings
            for key in sorted(os.environ):
                if key.startswith(("TRAINYARD_", "PG")):
                    print(f"env {key}={os.environ[key]}", file=sys.stderr, flush=True)
        elif name == "finished":
            emit("finished", model_path=str(Path(args.workdir, "model.keras").resolve()))
        elif name == "failed":
            reason, _, message = value.partition(":")
            emit("failed", reason=reason, message=message or f"fake {reason}")
        elif name == "garbage":
            print(value, flush=True)
        elif name == "log":
            print(value, file=sys.stderr, flush=True)
        elif name in ("sleep", "hang"):
            time.sleep(float(value) if name == "sleep" else 10**6)
        elif name == "exit":
            return int(value)
        elif name == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif name == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif name == "child":
            grandchild = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(10**6)"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # not our stdout: the supervisor's EOF is ours
            )
            print(f"fake trainer: grandchild {grandchild.pid}", file=sys.stderr, flush=True)
        else:
            parser.error(f"unknown step {step!r}")
    return 0


# -- for the tests that drive it -----------------------------------------------------------


def command(*steps: str) -> str:
    """A `trainer_command` setting that runs this fake with `steps`."""
    return shlex.join([sys.executable, str(FAKE), "--steps", *steps])


def procs() -> Iterator[ProcessInfo]:
    """Every process we can read (worker.procfs, the project's one /proc reader; imported
    here, not at the top, so that the script itself needs nothing but the stdlib)."""
    from worker.procfs import processes

    return processes()


def live_in_group(pgid: int) -> list[int]:
    """PIDs of the processes of group `pgid` that still run (a zombie has ended)."""
    return [p.pid for p in procs() if p.pgid == pgid and p.state != "Z"]


def live_with_workdir(workdir: Path) -> list[ProcessInfo]:
    """The live processes started with `--workdir workdir` (trainers, fake or real)."""
    from worker.procfs import trainers_in

    return trainers_in(workdir)


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition()` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
