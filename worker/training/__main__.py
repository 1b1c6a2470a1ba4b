"""`python -m worker.training`: the seed's train.py, grown up (also `trainyard train`).

    python -m worker.training --gpus 2 --epochs 70 --output plot.png
    python -m worker.training --json --gpus 0 --cpu-replicas 2 --dataset digits

Exit codes: 0 finished, 2 user_error, 3 nan_loss, 4 oom, 1 internal (and 1 when
--exit-on-stdin-eof sees its parent go away).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

from .config import TrainConfig, UserError
from .events import HumanReporter, JsonReporter, Reporter

EXIT_CODES = {"user_error": 2, "nan_loss": 3, "oom": 4, "internal": 1}
EXIT_PARENT_GONE = 1


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
    add("--model", help="model to train (default minigooglenet)")
    add("--dataset", help="digits, synthetic, cifar10 or a path to an .npz (default digits)")
    add("-g", "--gpus", type=int, help="number of GPUs to train on (default 1; 0 = CPU)")
    add("--cpu-replicas", type=int, help="split the CPU into N replicas (needs --gpus 0)")
    add("--epochs", type=int, help="epochs to train (default 70)")
    add("--lr", type=float, help="initial learning rate (default 0.005)")
    add("--batch-size", type=int, help="batch size per replica (default 64)")
    add("--momentum", type=float, help="SGD momentum (default 0.9)")
    add("--bn-momentum", type=float, help="BatchNormalization momentum (default 0.99)")
    add("--augment", action=argparse.BooleanOptionalAction, help="shift/flip augmentation")
    add("--lr-power", type=float, help="power of the poly LR decay (default 1.0: linear)")
    add("--lr-scaling", help="none, or linear: LR x replicas after a short warm-up")
    add("--mixed-precision", help="auto, float32, bfloat16 or float16 (default auto)")
    add("--seed", type=int, help="fix weight init and shuffling")
    add("--name", help="a label for this run")
    add("-o", "--output", metavar="PLOT.png", help="write the loss/accuracy plot here")
    add("--workdir", metavar="DIR", help="checkpoints and model (default ./trainyard-run)")
    add("--json", action="store_true", help="print JSON-line events on stdout, logs on stderr")
    add(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (the supervising parent died)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults, overridden by --config FILE, overridden by explicit flags."""
    values: dict[str, Any] = {}
    if hasattr(args, "config"):
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read config file {args.config}: {error}") from error
        if not isinstance(loaded, dict):
            raise UserError(f"config file {args.config} must hold a JSON object")
        values.update(loaded)
    for name in TrainConfig.field_names():
        if hasattr(args, name):
            values[name] = getattr(args, name)
    return TrainConfig.from_dict(values)


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
    try:
        args = build_parser(prog).parse_args(argv)
        if getattr(args, "exit_on_stdin_eof", False):
            _watch_stdin()
        config = config_from_args(args)
        # Quiet TensorFlow's INFO chatter (oneDNN notices); warnings and errors still show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        from .callbacks import TrainingFailure
        from .engine import train

        output = getattr(args, "output", None)
        try:
            train(
                config,
                Path(getattr(args, "workdir", "trainyard-run")),
                reporter,
                Path(output) if output else None,
            )
        except TrainingFailure as failure:
            return _fail(reporter, failure.reason, failure.message)
        return 0
    except SystemExit as exit_request:  # --help
        return exit_request.code if isinstance(exit_request.code, int) else 0
    except UserError as error:
        return _fail(reporter, "user_error", str(error))
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"internal error: {type(error).__name__}: {error}".split())
        return _fail(reporter, "internal", message[:500])


def _fail(reporter: Reporter, reason: str, message: str) -> int:
    reporter.event("failed", reason=reason, message=message)
    return EXIT_CODES[reason]


if __name__ == "__main__":
    sys.exit(main())
