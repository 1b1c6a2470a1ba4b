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
    log:TEXT              TEXT as a line on stderr (the job's log); a literal \\x00 in
                          it is written as a NUL
    lines:N               N lines "line 1" .. "line N" on stderr
    checkpoints           the files in its checkpoints folder, and their bytes, on stderr
    sleep:SECONDS, hang   sleep that long, or forever
    exit:CODE             exit at once with CODE
    kill                  SIGKILL itself, as the kernel's OOM killer would
    term                  SIGTERM itself, as an operator's `kill PID` would
    child                 start a grandchild in our process group that sleeps forever
    env                   print the TRAINYARD_* and PG* variables it was given on stderr
    ignore-term           ignore SIGTERM from now on, as a stuck trainer (a child started
                          later inherits it); only SIGKILL ends it then
    resume:SECONDS[:BYTES]
                          train as a real trainer resumed in --workdir would, so that one
                          command is right for a first run and for every resumed one: find
                          the newest checkpoint in --workdir/checkpoints (epoch-NNNN.npz,
                          as the real trainer and the artifact store name them, or
                          epoch-NNNN, as epoch:N does), say on stderr which ("resuming after
                          epoch K from FILE" or "no checkpoint: from epoch 1"), replay epochs
                          1..K as `epoch` records with replayed=true (the metrics of an epoch
                          are always the same), then for each epoch K+1 .. the config's
                          `epochs`: sleep SECONDS (the epoch's training), write its
                          checkpoint epoch-NNNN.npz of BYTES bytes (default 16; written aside
                          and renamed, the newest two kept), send `checkpoint`, then the
                          epoch's record. A full disk while writing a checkpoint removes the
                          partial file, sends `failed` disk_full naming the file and the
                          bytes free, and exits 5, as the real trainer does

After the last step it exits 0. The flags the supervisor appends are accepted: with
--exit-on-stdin-eof it exits 1 as soon as stdin closes, like the real trainer; --config is
read for the replica and epoch counts; --workdir (which marks the trainer's processes as
the job's) names the checkpoint paths; --json is ignored. SIGTERM ends it (Python's
default) unless ignore-term.

The helpers below the script are for the tests that drive it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
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


def epoch_record(epoch: int, replicas: int, replayed: bool) -> dict[str, Any]:
    """The `epoch` event's fields for `epoch`: the same whichever run trains or replays it."""
    return {
        "epoch": epoch,
        "loss": 1.0 / epoch,
        "accuracy": 0.5,
        "val_loss": 1.1 / epoch,
        "val_accuracy": 0.4,
        "lr": 0.005,
        "seconds": 0.01,
        "replicas": replicas,
        "replayed": replayed,
    }


CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})(\.npz)?$")


def resume(workdir: Path, epochs: int, replicas: int, seconds: float, size: int) -> int:
    """The `resume` step; returns the exit code (0, or 5 for a full disk)."""
    folder = Path(workdir, "checkpoints").resolve()
    found = sorted(
        (int(match.group(1)), entry.name)
        for entry in (folder.iterdir() if folder.is_dir() else [])
        if (match := CHECKPOINT_NAME.match(entry.name))
    )
    done = found[-1][0] if found else 0
    where = f"resuming after epoch {done} from {found[-1][1]}" if found else "no checkpoint"
    print(f"fake trainer: {where}: from epoch {done + 1}", file=sys.stderr, flush=True)
    for epoch in range(1, done + 1):
        emit("epoch", **epoch_record(epoch, replicas, replayed=True))
    for epoch in range(done + 1, epochs + 1):
        time.sleep(seconds)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"epoch-{epoch:04d}.npz"
        temporary = folder / f".{final.name}.{os.getpid()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                block = b"\0" * min(size, 1 << 20)
                left = size
                while left > 0:
                    left -= os.write(descriptor, block[:left])
            finally:
                os.close(descriptor)
            os.replace(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)  # a full disk must not also keep half a file
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            message = (  # as app/core/disk.py words it for the real trainer
                f"no space left on the device: could not write {temporary} "
                f"({free} bytes free in {folder})"
            )
            emit("failed", reason="disk_full", message=message)
            return 5
        for old in found_epochs(folder)[:-2]:  # the newest two kept, as the real one
            Path(folder, f"epoch-{old:04d}.npz").unlink(missing_ok=True)
        emit("checkpoint", epoch=epoch, path=str(final))
        emit("epoch", **epoch_record(epoch, replicas, replayed=False))
    return 0


def found_epochs(folder: Path) -> list[int]:
    return sorted(
        int(entry.name[6:-4])
        for entry in folder.iterdir()
        if CHECKPOINT_NAME.match(entry.name) and entry.name.endswith(".npz")
    )


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
            model = Path(args.workdir, "model.keras").resolve()
            model.write_bytes(b"fake model")  # what the real one saves, for the store
            emit("finished", model_path=str(model))
        elif name == "failed":
            reason, _, message = value.partition(":")
            emit("failed", reason=reason, message=message or f"fake {reason}")
        elif name == "garbage":
            print(value, flush=True)
        elif name == "log":  # "\\x00" in TEXT stands for a NUL, which argv cannot carry
            print(value.replace("\\x00", "\x00"), file=sys.stderr, flush=True)
        elif name == "checkpoints":  # what a resuming trainer finds in its folder
            folder = Path(args.workdir, "checkpoints")
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            sizes = [(Path(folder, n).read_bytes()) for n in found]
            print(f"checkpoints found: {found} {sizes}", file=sys.stderr, flush=True)
        elif name == "lines":
            for number in range(1, int(value) + 1):
                print(f"line {number}", file=sys.stderr)
            sys.stderr.flush()
        elif name in ("sleep", "hang"):
            time.sleep(float(value) if name == "sleep" else 10**6)
        elif name == "exit":
            return int(value)
        elif name == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif name == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif name == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif name == "resume":
            pace, _, size = value.partition(":")
            epochs = int(config.get("epochs", 1))
            code = resume(Path(args.workdir), epochs, replicas, float(pace), int(size or 16))
            if code:
                return code
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
