"""How far a long job is, in its log: done / total, rate and time left (ETA).

One helper for training, generation, scoring (the score and table stages) and the judge. A line
is logged at the first update (the first step shows the job is running and how fast), each time
another tenth of the work is done, at the end, and between those whenever ``interval_s`` has
passed since the last line: a fast job writes about a dozen lines, a slow one still shows it is
alive every half minute. Rates and the ETA count only this process's work (a resumed job
starts counting where it resumed). No torch: safe for every stage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12s``."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """``update()`` after each unit of work (a step, a batch, a call); it logs when a line is due.

    ``counts`` names further quantities whose rate is reported (e.g. ``("tokens",)``: pass
    ``tokens=`` to ``update``). Thread-safe (the judge's calls finish on several threads).
    """

    def __init__(self, log: logging.Logger, label: str, total: int, unit: str, *, start: int = 0,
                 counts: tuple[str, ...] = (), interval_s: float = 30.0, fraction: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.label, self.total, self.unit = log, label, int(total), unit
        self.done = self._start = int(start)
        self.counts = dict.fromkeys(counts, 0.0)
        self.interval_s, self.clock = interval_s, clock
        self._every = max(1, int(self.total * fraction))  # a line at every tenth of the work
        self._next_mark = (self.done // self._every + 1) * self._every
        self._t0 = self._last = clock()
        self._first = True
        self._lock = threading.Lock()

    def update(self, n: int = 1, detail: str = "", **counts: float) -> bool:
        """Count ``n`` more units (and the named ``counts``); log a line if one is due. Returns
        whether it logged."""
        with self._lock:
            self.done += n
            for name, value in counts.items():
                self.counts[name] += value
            now = self.clock()
            due = (self._first or self.done >= self.total or self.done >= self._next_mark
                   or now - self._last >= self.interval_s)
            if not due:
                return False
            self._first, self._last = False, now
            self._next_mark = (self.done // self._every + 1) * self._every
            self.log.info("%s", self.line(now, detail))
            return True

    def line(self, now: float, detail: str = "") -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"]
        elapsed = now - self._t0
        if elapsed > 0 and self.done > self._start:
            rate = (self.done - self._start) / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            parts += [f"{value / elapsed:,.0f} {name}/s" for name, value in self.counts.items()]
            left = self.total - self.done
            parts.append(f"ETA {duration(left / rate)}" if left > 0 else f"took {duration(elapsed)}")
        return ", ".join(parts) + (f"; {detail}" if detail else "")
