"""`python -m worker.training`: the seed's train.py, grown up (also `trainyard train`).

    python -m worker.training --gpus 2 --epochs 70 --output plot.png
    python -m worker.training --json --gpus 0 --cpu-replicas 2 --dataset digits

The settings are the job spec's (app/core/spec.py): one flag per field, over the fields of
an optional --config JSON file, over the spec's defaults. They are validated before
TensorFlow loads.

Run folders: without --workdir every run trains from scratch in a new folder,
./trainyard-runs/<UTC time, e.g. 20250102T030405Z> (with -2, -3, ... appended when two runs
start in the same second). Its path is printed before training starts: a line on stdout, or
on stderr with --json (stdout then carries JSON events only); the `started` event gives it
as `workdir` (absolute) in both modes. A run resumes from checkpoints only when --workdir
names a folder that holds them (the supervisor always passes --workdir). A new folder that a
run leaves empty (it failed before its first checkpoint) is removed again.

Exit codes: 0 finished, 2 user_error, 3 nan_loss, 4 oom, 1 internal (and 1 when
--exit-on-stdin-eof sees its parent go away).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from app.core.disk import disk_full_message, is_disk_full
from app.core.spec import TrainingSpec
from app.core.spec_flags import add_spec_flags, spec_values

from .config import UserError, load_config
from .events import HumanReporter, JsonReporter, Reporter

EXIT_CODES = {"user_error": 2, "nan_loss": 3, "oom": 4, "disk_full": 5, "internal": 1}
EXIT_PARENT_GONE = 1
RUNS_FOLDER = Path("trainyard-runs")  # relative: under the directory the trainer runs in


class _Parser(argparse.ArgumentParser):
    # Bad flags are user errors: in --json mode they must become a "failed" event, not just
    # argparse's usage text on stderr.
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def build_parser(prog: str = "python -m worker.training") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Train MiniGoogLeNet (the seed recipe) with tf.distribute.MirroredStrategy.",
        argument_default=argparse.SUPPRESS,  # so explicit flags can override --config
    )
    add = parser.add_argument
    add("--config", metavar="FILE.json", help="JSON object of settings; flags override it")
    add_spec_flags(parser, TrainingSpec, short={"gpus": "-g"})
    add("-o", "--output", metavar="PLOT.png", help="write the loss/accuracy plot here")
    add(
        "--workdir",
        metavar="DIR",
        help=f"checkpoints and model; resumes from DIR's checkpoints (default: a new folder "
        f"under ./{RUNS_FOLDER})",
    )
    add("--json", action="store_true", help="print JSON-line events on stdout, logs on stderr")
    add(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the supervising parent died)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainingSpec:
    """The spec's defaults, overridden by --config FILE, overridden by explicit flags."""
    values: dict[str, Any] = {}
    if hasattr(args, "config"):
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read config file {args.config}: {error}") from error
        if not isinstance(loaded, dict):
            raise UserError(f"config file {args.config} must hold a JSON object")
        values.update(loaded)
    values.update(spec_values(args, TrainingSpec))
    return load_config(values)


def new_run_folder(parent: Path = RUNS_FOLDER, now: datetime | None = None) -> Path:
    """Create and return a folder of its own for one run: parent/<UTC time>, or with -2, -3,
    ... appended when that exists. mkdir without exist_ok is the claim, so two runs started
    in the same second never share a folder."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    folder, number = parent / stamp, 1
    while True:
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            number += 1
            folder = parent / f"{stamp}-{number}"


def _watch_stdin() -> None:
    """Exit at once when stdin reaches EOF: the supervisor holding our stdin pipe is gone,
    and an orphaned trainer would keep its GPUs busy with nobody recording the epochs."""

    def watch() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="stdin-eof-watch", daemon=True).start()


def main(argv: list[str] | None = None, prog: str = "python -m worker.training") -> int:
    # Checkpoints, models and plots are private to the account that trains (a supervised
    # trainer inherits the same umask from its worker).
    os.umask(0o077)
    argv = sys.argv[1:] if argv is None else argv
    reporter: Reporter
    if "--json" in argv:
        # From here on only events reach the real stdout: anything TensorFlow, Keras or C++
        # libraries print to fd 1 lands on stderr instead.
        sys.stdout.flush()
        event_fd = os.dup(1)
        os.dup2(2, 1)
        reporter = JsonReporter(event_fd)
    else:
        reporter = HumanReporter()
    workdir = Path()  # where a full disk is reported to be, until --workdir is known
    try:
        args = build_parser(prog).parse_args(argv)
        workdir = Path(getattr(args, "workdir", "."))
        if getattr(args, "exit_on_stdin_eof", False):
            _watch_stdin()
        config = config_from_args(args)
        if hasattr(args, "workdir"):
            return _train(config, Path(args.workdir), reporter, getattr(args, "output", None))
        workdir = new_run_folder()
        reporter.info(f"[INFO] run folder {workdir} (to resume it: --workdir {workdir})")
        try:
            return _train(config, workdir, reporter, getattr(args, "output", None))
        finally:
            with contextlib.suppress(OSError):  # rmdir removes only an empty folder
                workdir.rmdir()
    except SystemExit as exit_request:  # --help
        return exit_request.code if isinstance(exit_request.code, int) else 0
    except UserError as error:
        return _fail(reporter, "user_error", str(error))
    except Exception as error:
        if is_disk_full(error):
            return _fail(reporter, "disk_full", disk_full_message(error, workdir))
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"internal error: {type(error).__name__}: {error}".split())
        return _fail(reporter, "internal", message[:500])


def _train(config: TrainingSpec, workdir: Path, reporter: Reporter, output: str | None) -> int:
    # Quiet TensorFlow's INFO chatter (oneDNN notices); warnings and errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    from .callbacks import TrainingFailure  # TensorFlow loads here, after the settings passed
    from .engine import train

    try:
        train(config, workdir, reporter, Path(output) if output else None)
    except TrainingFailure as failure:
        return _fail(reporter, failure.reason, failure.message)
    return 0


def _fail(reporter: Reporter, reason: str, message: str) -> int:
    reporter.event("failed", reason=reason, message=message)
    return EXIT_CODES[reason]


if __name__ == "__main__":
    sys.exit(main())
