"""Keep a long-running process's start-up objects out of the garbage collector's walks."""

from __future__ import annotations

import gc

from sqlalchemy.orm import configure_mappers


def freeze_startup_objects() -> None:
    """Move what start-up allocated (modules, the app, the ORM's configured mappers) into
    the collector's permanent generation, once a process is ready to serve.

    A full collection otherwise walks all of it again, a few times a minute: in a scheduling
    pass over 10,000 queued jobs (tens of thousands of short-lived rows) one pass in four
    took 75-138 ms instead of 35-40 because of it (bench/api_scale.py). Objects created later
    are collected as usual."""
    configure_mappers()
    gc.collect()
    gc.freeze()
