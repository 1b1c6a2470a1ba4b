"""A per-user limit on how often something may be done: a sliding window of one minute.

Kept in the API process's memory: with several API processes each allows the rate (the
README says so); one script looping on POST /jobs is what it is for.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class SlidingWindow:
    def __init__(self, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self._events: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: int, limit: int, now: float | None = None) -> int | None:
        """Record one event of `key` and return None, or, when `key` had `limit` events in
        the window already, record nothing and return the whole seconds until one expires."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= limit:
                return max(1, math.ceil(events[0] + self.window - now))
            events.append(now)
            return None


submissions = SlidingWindow()
