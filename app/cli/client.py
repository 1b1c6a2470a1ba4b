"""A small HTTP client for the `trainyard` commands that talk to a running service."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.core.config import get_settings


class ApiError(RuntimeError):
    """The service answered with an error; the message is its detail."""


def default_url() -> str:
    return os.environ.get("TRAINYARD_URL", "http://127.0.0.1:8000")


def is_loopback(url: str) -> bool:
    """Whether `url` names this machine (localhost, 127.0.0.0/8, ::1)."""
    host = httpx.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_token(url: str) -> str | None:
    """TRAINYARD_TOKEN, else the admin token `trainyard up` wrote on this machine, which is
    sent only to a service on this machine: never to whatever TRAINYARD_URL names."""
    token = os.environ.get("TRAINYARD_TOKEN")
    if token:
        return token
    token_file = get_settings().data_dir / "admin-token"
    if not is_loopback(url) or not token_file.exists():
        return None
    return token_file.read_text().strip()


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        url = url or default_url()
        token = token or default_token(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(f"cannot reach {self.http.base_url}: {error}") from error
        if response.status_code >= 400:
            raise ApiError(f"{response.status_code}: {describe_error(response)}")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def events(self, job_id: int, reconnect_seconds: float = 120) -> Iterator[dict[str, Any]]:
        """A job's events (NDJSON stream) to its `end`. A dropped connection is resumed after
        the last event received (?after=), so none is lost or repeated; retried for up to
        `reconnect_seconds` of failing to reconnect, then ApiError."""
        after, failing_since = 0, None
        headers = {"Accept": "application/x-ndjson"}
        while True:
            try:
                with self.http.stream(
                    "GET",
                    f"/jobs/{job_id}/events",
                    params={"after": after},
                    headers=headers,
                    timeout=httpx.Timeout(30, read=60),  # heartbeats come every 15 s
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError(f"{response.status_code}: {describe_error(response)}")
                    failing_since = None
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["event"] == "heartbeat":
                            continue
                        if event["id"] is not None:
                            after = event["id"]
                        yield event
                        if event["event"] == "end":
                            return
            except (httpx.TransportError, json.JSONDecodeError) as error:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > reconnect_seconds:
                    raise ApiError(f"lost {self.http.base_url}: {error}") from error
                time.sleep(1)


def describe_error(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text
    if isinstance(detail, list):  # FastAPI validation errors: name each field
        return "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', [])[1:])}: {error.get('msg')}"
            for error in detail
        )
    return str(detail)
