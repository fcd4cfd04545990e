"""Token buckets, one per key: how much any one client (an API key, a policy's source) may do.

``take(key)`` spends one token and returns None, or returns the seconds until the next token
and spends nothing. A bucket holds at most ``burst`` tokens and refills at ``rate`` per second.
At most ``bound`` keys are kept (least recently used dropped: a dropped key starts full again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    def __init__(self, rate: float, burst: float, bound: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.bound, self.clock = float(rate), float(burst), bound, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last refill)

    def take(self, key: str) -> float | None:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = None if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens if wait is not None else tokens - 1.0, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.bound:
            self._buckets.popitem(last=False)
        return wait
