"""`trainyard` commands that talk to a running service: submit, status, logs, plot, cancel,
delete, gpus, datasets upload/list/delete, models upload/list/delete."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.cli.client import ApiError, Client
from app.core.spec import JobSpec
from app.core.spec_flags import add_spec_flags, spec_values

TERMINAL = {"succeeded", "failed", "cancelled"}
console = Console()

UrlOption = Annotated[
    str | None, typer.Option("--url", help="Service URL (default $TRAINYARD_URL or :8000).")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token (default $TRAINYARD_TOKEN or the admin token)."),
]


def _client(url: str | None, token: str | None) -> Client:
    return Client(url, token)


def _fail(error: ApiError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(error))}")
    return typer.Exit(1)


def submit_parser() -> argparse.ArgumentParser:
    """`trainyard submit`'s flags: one per job-spec field, plus the client's own."""
    parser = argparse.ArgumentParser(
        prog="trainyard submit",
        description="Submit a training job; with --wait, show a progress bar per epoch until it "
        "ends. Fields not given take the service's defaults.",
    )
    add_spec_flags(parser, JobSpec, short={"gpus": "-g"})
    parser.add_argument("--spec", type=Path, help="JSON file with spec fields; flags override it")
    parser.add_argument("--wait", action="store_true", help="follow the job to its end")
    parser.add_argument("--url", help="service URL (default $TRAINYARD_URL or :8000)")
    parser.add_argument("--token", help="bearer token (default $TRAINYARD_TOKEN or the admin's)")
    return parser


def submit(ctx: typer.Context) -> None:
    """Submit a training job; --wait follows it (`trainyard submit --help` lists the flags)."""
    args = submit_parser().parse_args(ctx.args)
    body: dict[str, Any] = json.loads(args.spec.read_text()) if args.spec else {}
    body |= spec_values(args, JobSpec)  # validated by the service, which names a bad field
    client = _client(args.url, args.token)
    try:
        job = client.json("POST", "/jobs", json=body)
        console.print(f"job {job['id']} {job['status']}")
        if args.wait:
            job = follow(client, job)
    except ApiError as error:
        raise _fail(error) from error
    if args.wait and job["status"] != "succeeded":
        raise typer.Exit(1)


def follow(client: Client, job: dict[str, Any]) -> dict[str, Any]:
    """A progress bar per epoch, fed by the job's event stream (which resumes by itself
    after a dropped connection), and one line per epoch; returns the job once it ended."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    epochs = job["spec"]["epochs"]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"job {job['id']}", total=epochs, note=job["status"])
        for event in client.events(job["id"]):
            data = event["data"]
            if event["event"] == "epoch":
                line = f"epoch {data['epoch']}/{epochs}" + "".join(
                    f" {name} {data[name]:.4f}"
                    for name in ("loss", "accuracy", "val_loss", "val_accuracy")
                    if data.get(name) is not None
                )
                progress.console.print(Text(line))
                progress.update(task, completed=data["epoch"], note=line.split(" ", 2)[-1])
            elif event["event"] == "status":
                note = data["status"] + (f": {data['reason']}" if data.get("reason") else "")
                progress.update(task, note=note)
    job = client.json("GET", f"/jobs/{job['id']}")
    style = "green" if job["status"] == "succeeded" else "red"
    console.print(f"job {job['id']} [{style}]{job['status']}[/{style}]")
    if job.get("failure_message"):
        console.print(Text(f"{job['failure_reason']}: {job['failure_message']}"))
    return job


def watch(job_id: int, url: UrlOption = None, token: TokenOption = None) -> None:
    """Follow a job to its end: a progress bar and a line per epoch, live."""
    client = _client(url, token)
    try:
        job = follow(client, client.json("GET", f"/jobs/{job_id}"))
    except ApiError as error:
        raise _fail(error) from error
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def status(
    job_id: Annotated[int | None, typer.Argument(help="A job; none lists recent jobs.")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Show one job, or a table of the most recent jobs."""
    try:
        client = _client(url, token)
        if job_id is not None:
            console.print_json(data=client.json("GET", f"/jobs/{job_id}"))
            return
        page = client.json("GET", "/jobs", params={"limit": 30})
    except ApiError as error:
        raise _fail(error) from error
    table = Table("id", "name", "owner", "status", "gpus", "epoch", "val_acc", "waiting / failure")
    for job in page["items"]:
        last = job.get("last_metrics") or {}
        # Text, not markup: a job named "[/evil]" is shown as it is, not parsed.
        table.add_row(
            str(job["id"]),
            Text(job["name"] or ""),
            Text(job["owner"] or ""),
            job["status"],
            str(job["spec"]["gpus"]),
            f"{job['current_epoch'] or 0}/{job['spec']['epochs']}",
            f"{last['val_accuracy']:.4f}" if last.get("val_accuracy") is not None else "",
            Text(job["waiting_reason"] or job["failure_reason"] or ""),
        )
    console.print(table)


def logs(
    job_id: int,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    follow_log: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Print a job's trainer log; -f keeps printing new lines until the job ends."""
    client = _client(url, token)
    try:
        if follow_log:  # the kept log from its start, then live, resuming after drops
            for event in client.events(job_id):
                if event["event"] == "log":
                    typer.echo("\n".join(event["data"]["lines"]))
            return
        params = {"tail": tail} if tail else {}
        text = client.request("GET", f"/jobs/{job_id}/logs", params=params).text
    except ApiError as error:
        raise _fail(error) from error
    typer.echo(text, nl=False)


def plot(
    job_id: int,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("plot.png"),
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Download a job's loss/accuracy plot (PNG)."""
    try:
        output.write_bytes(_client(url, token).request("GET", f"/jobs/{job_id}/plot.png").content)
    except ApiError as error:
        raise _fail(error) from error
    console.print(f"wrote {output}")


def cancel(job_id: int, url: UrlOption = None, token: TokenOption = None) -> None:
    """Cancel a job (yours, or any as an admin)."""
    try:
        job = _client(url, token).json("POST", f"/jobs/{job_id}/cancel")
    except ApiError as error:
        raise _fail(error) from error
    console.print(
        f"job {job_id} {job['status']}" + (" (stopping)" if job["status"] == "running" else "")
    )


def delete(job_id: int, url: UrlOption = None, token: TokenOption = None) -> None:
    """Delete an ended job with its log and model (yours, or any as an admin)."""
    try:
        _client(url, token).request("DELETE", f"/jobs/{job_id}")
    except ApiError as error:
        raise _fail(error) from error
    console.print(f"job {job_id} deleted")


def gpus(url: UrlOption = None, token: TokenOption = None) -> None:
    """Show every host's GPUs: free, leased (job and user) or foreign."""
    try:
        hosts = _client(url, token).json("GET", "/gpus")
    except ApiError as error:
        raise _fail(error) from error
    table = Table("host", "gpu", "name", "memory MiB", "util %", "state", "job", "user")
    for host in hosts:
        label = Text(host["name"] + (" (simulated)" if host["simulated"] else ""))
        if not host["alive"]:
            label.append(" (down)", style="red")
        if not host["gpus"]:
            table.add_row(label, "-", "no GPUs", "", "", "", "", "")
        for gpu in host["gpus"]:
            memory = (
                f"{gpu['memory_used_mib']}/{gpu['memory_total_mib']}"
                if gpu["memory_total_mib"]
                else ""
            )
            state = gpu["state"]
            if state == "foreign":
                state += f" (pids {', '.join(map(str, gpu['foreign_pids']))})"
            table.add_row(
                label,
                str(gpu["index"]),
                Text(gpu["name"]),
                memory,
                "" if gpu["utilization_percent"] is None else str(gpu["utilization_percent"]),
                state,
                str(gpu["job_id"] or ""),
                Text(gpu["user"] or ""),
            )
    console.print(table)


datasets_cli = typer.Typer(help="Upload, list and delete your .npz datasets.", no_args_is_help=True)


@datasets_cli.command("upload")
def datasets_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An .npz file.")],
    name: Annotated[str | None, typer.Option(help="Its name (default: the file's).")] = None,
    public: Annotated[
        bool, typer.Option("--public", help="Let every user see and train on it.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Upload an .npz (x_train, y_train, x_test, y_test); prints its id for `--dataset`."""
    form = {"public": "true" if public else "false", **({"name": name} if name else {})}
    try:
        with path.open("rb") as handle:
            dataset = _client(url, token).json(
                "POST", "/datasets", files={"file": (path.name, handle)}, data=form
            )
    except ApiError as error:
        raise _fail(error) from error
    shape = "x".join(map(str, dataset["image_shape"]))
    console.print(
        Text(
            f"dataset {dataset['id']} {dataset['name']}: {dataset['train_images']} train / "
            f"{dataset['test_images']} test images of {shape}, {dataset['classes']} classes"
            + (" (public)" if dataset["public"] else "")
        )
    )


@datasets_cli.command("list")
def datasets_list(url: UrlOption = None, token: TokenOption = None) -> None:
    """The datasets you may use: yours and public ones (an admin: all)."""
    try:
        datasets = _client(url, token).json("GET", "/datasets")
    except ApiError as error:
        raise _fail(error) from error
    table = Table("id", "name", "owner", "public", "images", "shape", "classes", "MB")
    for dataset in datasets:
        table.add_row(
            str(dataset["id"]),
            Text(dataset["name"]),
            Text(dataset["owner"] or ""),
            "yes" if dataset["public"] else "",
            f"{dataset['train_images']}+{dataset['test_images']}",
            "x".join(map(str, dataset["image_shape"])),
            str(dataset["classes"]),
            f"{dataset['size_bytes'] / 1e6:.1f}",
        )
    console.print(table)


@datasets_cli.command("delete")
def datasets_delete(dataset_id: int, url: UrlOption = None, token: TokenOption = None) -> None:
    """Delete one of your datasets (refused while a queued or running job uses it)."""
    _delete("dataset", f"/datasets/{dataset_id}", url, token)


def _delete(what: str, path: str, url: str | None, token: str | None) -> None:
    try:
        _client(url, token).request("DELETE", path)
    except ApiError as error:
        raise _fail(error) from error
    console.print(f"{what} {path.rsplit('/', 1)[-1]} deleted")


models_cli = typer.Typer(
    help="The model zoo, and your uploaded Keras architectures.", no_args_is_help=True
)


@models_cli.command("upload")
def models_upload(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A .keras file or model JSON.")
    ],
    name: Annotated[str | None, typer.Option(help="Its name (default: the file's).")] = None,
    public: Annotated[bool, typer.Option("--public", help="Let every user train it.")] = False,
    logits: Annotated[
        bool, typer.Option("--logits", help="Its last layer gives logits, not a softmax.")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Upload a Keras architecture (checked without running any of its code); prints its
    id, for `--model ID`."""
    form = {
        "public": "true" if public else "false",
        "output": "logits" if logits else "softmax",
        **({"name": name} if name else {}),
    }
    try:
        with path.open("rb") as handle:
            model = _client(url, token).json(
                "POST", "/models", files={"file": (path.name, handle)}, data=form
            )
    except ApiError as error:
        raise _fail(error) from error
    console.print(
        Text(
            f"model {model['id']} {model['name']}: {model['params']:,} parameters, "
            f"{model['input']}, {model['classes']} classes ({model['output']})"
            + (" (public)" if model["public"] else "")
        )
    )


@models_cli.command("list")
def models_list(url: UrlOption = None, token: TokenOption = None) -> None:
    """The zoo's models and the uploaded ones you may use."""
    try:
        models = _client(url, token).json("GET", "/models")
    except ApiError as error:
        raise _fail(error) from error
    table = Table("model", "name", "owner", "parameters", "classes", "weights")
    for model in models:
        table.add_row(
            str(model["id"]) if model["id"] is not None else Text(model["name"]),
            Text(model["name"] if model["id"] is not None else "(zoo)"),
            Text(model["owner"] or ""),
            f"{model['params']:,}",
            str(model["classes"] or ""),
            "yes" if model["has_weights"] else "",
        )
    console.print(table)


@models_cli.command("delete")
def models_delete(model_id: int, url: UrlOption = None, token: TokenOption = None) -> None:
    """Delete one of your uploaded architectures (refused while a job uses it)."""
    _delete("model", f"/models/{model_id}", url, token)


def register(cli: typer.Typer) -> None:
    # submit parses its own flags (derived from the spec): typer passes them through.
    cli.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(submit)
    for command in (status, watch, logs, plot, cancel, delete, gpus):
        cli.command()(command)
    cli.add_typer(datasets_cli, name="datasets")
    cli.add_typer(models_cli, name="models")
