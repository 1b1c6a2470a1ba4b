"""How fast one user may submit jobs: `per_minute` a minute, in bursts of up to as many.

The generic cell rate algorithm (GCRA: the leaky bucket of nginx's `limit_req` and of most
API gateways) keeps one number per user, the theoretical arrival time (TAT): when the
user's submissions so far would have drained had each taken 60/per_minute seconds. Each
submission moves it one such interval on from max(TAT, now) and is refused when that puts it
more than a minute ahead. After a full burst, one more submission is admitted every
60/per_minute seconds.

The number is on the user's row (`users.submit_tat`) and moves in the UPDATE that locks that
row at every submission (app/core/lifecycle.py), so the limit holds across API processes and
racing requests, and a refused or failed submission's transaction takes its move back.
"""

from __future__ import annotations

import math

from sqlalchemy import ColumnElement, case

WINDOW_SECONDS = 60.0


def moved(
    tat: ColumnElement[float | None], now: ColumnElement[float], interval: ColumnElement[float]
) -> ColumnElement[float]:
    """The TAT after one more submission at `now`, each taking `interval` seconds (SQL
    expressions: the stored TAT's column, bound parameters)."""
    return case((tat > now, tat), else_=now) + interval


def interval(per_minute: int) -> float:
    """Seconds one submission takes of the user's rate."""
    return WINDOW_SECONDS / per_minute


def retry_after(tat: float, now: float) -> int | None:
    """None when the submission that moved the TAT to `tat` is admitted; else the whole
    seconds (at least 1) until one would be."""
    early = tat - now - WINDOW_SECONDS
    # A full burst at one instant ends a window ahead, give or take the rounding of adding
    # 60/per_minute to Unix seconds (about 1e-7 s each): a millisecond absorbs it.
    if early <= 1e-3:
        return None
    return max(1, math.ceil(early))
