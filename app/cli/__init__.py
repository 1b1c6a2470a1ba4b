"""The `trainyard` command: start the service or its parts, and train standalone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from types import FrameType
from typing import Annotated

import typer

from app.cli import remote
from app.core.config import Settings, get_settings, make_files_private

cli = typer.Typer(
    help="Trainyard: a REST training-job service for a shared GPU box.",
    no_args_is_help=True,
    add_completion=False,
)

user_cli = typer.Typer(help="Manage users and their API tokens.", no_args_is_help=True)
cli.add_typer(user_cli, name="user")

HostOption = Annotated[str, typer.Option(help="Address the API listens on.")]
PortOption = Annotated[int, typer.Option(help="Port the API listens on.")]


WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=64,
        help="API processes sharing the port (uvicorn workers): one process answers on one "
        "core at a time, so a busy API wants about one per core.",
    ),
]


@cli.command()
def api(
    host: HostOption = "127.0.0.1", port: PortOption = 8000, workers: WorkersOption = 1
) -> None:
    """Apply migrations, then serve the REST API (production: one of several processes)."""
    import uvicorn

    from app.api import metrics
    from app.core.migrate import upgrade_database

    upgrade_database()
    # Several workers write their request timings to files that each one's /metrics adds up.
    shared = metrics.shared_between_processes() if workers > 1 else nullcontext()
    with shared:
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", workers=workers)


@cli.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Jobs run at once (default TRAINYARD_WORKER_CONCURRENCY).")
    ] = None,
) -> None:
    """Run a Celery worker that trains the jobs it is sent (one per GPU host)."""
    from worker.celery_app import celery
    from worker.inventory import host_queue

    settings = get_settings()
    threads = concurrency or celery.conf.worker_concurrency  # sized when the app was made
    celery.worker_main(
        [
            "worker",
            "--pool=threads",  # each task only supervises a child process
            f"--concurrency={max(1, threads)}",
            f"--queues={host_queue(settings)}",
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
    from app.cli.supervision import AlreadyServing, dies_with, hold_data_dir, port_taken
    from app.core.migrate import upgrade_database

    settings = get_settings()
    settings.ensure_dirs()
    try:
        lock = hold_data_dir(settings.data_dir)
    except AlreadyServing as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    if why := port_taken(host, port):
        typer.echo(f"error: {why}", err=True)
        raise typer.Exit(1)
    upgrade_database(settings)
    typer.echo(f"Trainyard data directory: {settings.data_dir}")
    ensure_first_admin(settings)
    typer.echo(f"Database: {settings.database_url}")
    typer.echo(f"Broker: {settings.broker_url}")
    typer.echo(f"API: http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    me = [sys.executable, "-m", "app.cli"]
    # Own sessions: a Ctrl-C reaches only this process, which stops the children in order.
    # The parent-death signal ends them if this process is killed outright (SIGKILL, the
    # OOM killer), so none is left holding the port, the jobs or the GPUs.
    arm = dies_with(os.getpid())
    children = {
        name: subprocess.Popen([*me, *args], start_new_session=True, preexec_fn=arm)
        for name, args in (
            ("API", ["api", "--host", host, "--port", str(port)]),
            ("worker", ["worker"]),
        )
    }
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        typer.echo(f"\nStopping ({signal.Signals(signum).name}): API and worker ...")
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children.values()):
        time.sleep(0.2)
    died = {name: child.returncode for name, child in children.items() if child.poll() is not None}
    if not stopping:  # a child died on its own: take the other one down too
        stop(signal.SIGTERM, None)
    deadline = time.monotonic() + settings.cancel_grace_seconds + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    lock.close()
    if died and not _stopped_by_request(died, stopping):
        failed = ", ".join(f"the {name} exited with status {code}" for name, code in died.items())
        typer.echo(f"error: {failed}; stopped", err=True)
        raise typer.Exit(1)
    typer.echo("Stopped.")


def _stopped_by_request(died: dict[str, int], stopping: bool) -> bool:
    """Whether the children that had ended did so because we asked (a signal to `up`)."""
    return stopping and all(code in (0, -signal.SIGTERM) for code in died.values())


def ensure_first_admin(settings: Settings) -> None:
    """On the first start, create user `admin` and keep its token in a 0600 file (like
    Jupyter's token, printed so the person at the terminal can use it at once)."""
    from app.core.db import get_session_factory
    from app.core.users import count_users, create_user

    token_file = settings.data_dir / "admin-token"
    with get_session_factory()() as session:
        if count_users(session) == 0:
            _, token = create_user(session, "admin", is_admin=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # a file left from before keeps its mode otherwise
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            typer.echo(f"Created user 'admin'. Token (also in {token_file}):\n    {token}")
        elif token_file.exists():
            typer.echo(f"Admin token: in {token_file}")


@user_cli.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_', '-'.")],
    admin: Annotated[bool, typer.Option("--admin", help="May act on every job.")] = False,
) -> None:
    """Create a user and print its token (shown only this once; stored hashed)."""
    from app.core.db import get_session_factory
    from app.core.migrate import upgrade_database
    from app.core.users import UserError, create_user

    upgrade_database()
    with get_session_factory()() as session:
        try:
            _, token = create_user(session, name, is_admin=admin)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
    typer.echo(f"Created {'admin' if admin else 'user'} {name!r}. Its token:", err=True)
    typer.echo(token)


@user_cli.command("list")
def user_list() -> None:
    """List users: name, role, created, revoked."""
    from rich.console import Console
    from rich.table import Table

    from app.core.db import get_session_factory
    from app.core.migrate import upgrade_database
    from app.core.users import list_users

    upgrade_database()
    table = Table("name", "role", "created", "revoked")
    with get_session_factory()() as session:
        for user in list_users(session):
            table.add_row(
                user.name,
                "admin" if user.is_admin else "user",
                user.created_at.isoformat(timespec="seconds"),
                user.revoked_at.isoformat(timespec="seconds") if user.revoked_at else "",
            )
    Console().print(table)


@user_cli.command("revoke")
def user_revoke(name: str) -> None:
    """Revoke a user's token: its requests get 401 from now on."""
    from app.core.db import get_session_factory
    from app.core.migrate import upgrade_database
    from app.core.users import UserError, revoke_user

    upgrade_database()
    with get_session_factory()() as session:
        try:
            revoke_user(session, name)
        except UserError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
    typer.echo(f"Revoked {name!r}.")


@cli.command()
def gc(
    older_than: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Delete jobs that ended more than this many days ago "
            "(default TRAINYARD_JOB_RETENTION_DAYS).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list them.")] = False,
) -> None:
    """Delete old ended jobs with their epochs, logs and models (run it from cron)."""
    from datetime import UTC, datetime, timedelta

    from app.core.db import get_session_factory
    from app.core.migrate import upgrade_database
    from app.core.retention import collect_garbage, ended_before

    settings = get_settings()
    days = settings.job_retention_days if older_than is None else older_than
    if older_than is None and not days:
        typer.echo("nothing to do: TRAINYARD_JOB_RETENTION_DAYS is 0 (keep every job)")
        return
    upgrade_database(settings)
    age, now = timedelta(days=days), datetime.now(UTC)
    with get_session_factory()() as session:
        if dry_run:
            doomed = ended_before(session, now - age)
            typer.echo(f"{len(doomed)} jobs ended more than {days:g} days ago: {doomed}")
            return
        deleted = collect_garbage(session, settings, age, now)
    typer.echo(f"deleted {len(deleted)} jobs that ended more than {days:g} days ago")


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train standalone, no server: the seed's train.py grown up (`trainyard train --help`)."""
    from worker.training.__main__ import main as train_main

    raise typer.Exit(train_main(list(ctx.args), prog="trainyard train"))


remote.register(cli)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    make_files_private()
    cli()


if __name__ == "__main__":
    main()
