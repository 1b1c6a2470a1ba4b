"""The `trainyard` command: start the service or its parts, and train standalone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Annotated

import typer

from app.config import get_settings

cli = typer.Typer(
    help="Trainyard: a REST training-job service for a shared GPU box.",
    no_args_is_help=True,
    add_completion=False,
)

HostOption = Annotated[str, typer.Option(help="Address the API listens on.")]
PortOption = Annotated[int, typer.Option(help="Port the API listens on.")]


@cli.command()
def api(host: HostOption = "127.0.0.1", port: PortOption = 8000) -> None:
    """Apply migrations, then serve the REST API (production: one of several processes)."""
    import uvicorn

    from app.migrate import upgrade_database

    upgrade_database()
    uvicorn.run("app.main:app", host=host, port=port, log_level="info")


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default TRAINYARD_WORKER_CONCURRENCY).")
    ] = None,
) -> None:
    """Run a Celery worker that trains the jobs it is sent (one per GPU host)."""
    from worker.celery_app import celery

    settings = get_settings()
    celery.worker_main(
        [
            "worker",
            "--pool=threads",  # each task only supervises a child process
            f"--concurrency={concurrency or settings.worker_concurrency}",
            f"--hostname=trainyard@{settings.worker_name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=INFO",
        ]
    )


@cli.command()
def up(host: HostOption = "127.0.0.1", port: PortOption = 8000) -> None:
    """Start everything on this machine with no external service: API and one worker."""
    from app.migrate import upgrade_database

    settings = get_settings()
    upgrade_database(settings)
    typer.echo(f"Trainyard data directory: {settings.data_dir}")
    typer.echo(f"Database: {settings.database_url}")
    typer.echo(f"Broker: {settings.broker_url}")
    typer.echo(f"API: http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    me = [sys.executable, "-m", "app.cli"]
    # Own sessions: a Ctrl-C reaches only this process, which stops the children in order.
    children = [
        subprocess.Popen([*me, "api", "--host", host, "--port", str(port)], start_new_session=True),
        subprocess.Popen([*me, "worker"], start_new_session=True),
    ]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        typer.echo(f"\nStopping ({signal.Signals(signum).name}): API and worker ...")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:  # a child died on its own: take the other one down too
        stop(signal.SIGTERM, None)
    deadline = time.monotonic() + settings.cancel_grace_seconds + 30
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    typer.echo("Stopped.")


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train standalone, no server: the seed's train.py grown up (`trainyard train --help`)."""
    from worker.training.__main__ import main as train_main

    raise typer.Exit(train_main(list(ctx.args)))


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli()


if __name__ == "__main__":
    main()
