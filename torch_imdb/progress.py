"""Progress that shows both on a terminal and in a log: a tqdm bar on a terminal, plain lines otherwise.

tqdm draws nothing useful into a file (``disable=None`` turns it off there), so a
long run sent to a log would be silent for minutes. ``Progress`` keeps the bar on
a terminal and, elsewhere, writes a line every ``lines``-th of the total (when the
total is known) or every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm


class Progress:
    """``with Progress(total, desc) as p: ... p.update(n, postfix)``.

    Lines read ``DESC: DONE/TOTAL UNIT[, POSTFIX] (SECONDS s)``, through ``log``
    (default: stderr). ``enabled=False`` shows nothing.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "", log: Callable[[str], None] | None = None,
                 lines: int = 10, interval: float = 30.0, enabled: bool = True, leave: bool = True) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.bar = tqdm(total=total, desc=desc, unit=unit or "it", leave=leave, mininterval=1.0,
                        disable=None if enabled else True)
        self.lines = enabled and self.bar.disable  # no terminal: lines instead of the bar
        self.every = max(1, -(-total // lines)) if total and lines else 0
        self.interval, self.t0 = interval, time.perf_counter()
        self.last = self.t0

    def update(self, n: int = 1, postfix: str = "") -> None:
        before, self.done = self.done, self.done + n
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)
        if not self.lines:
            return
        now = time.perf_counter()
        crossed = self.every and before // self.every != self.done // self.every
        if (crossed and (self.total is None or self.done < self.total)) or (not self.every and now - self.last >= self.interval):
            self.last = now
            of = f"/{self.total}" if self.total else ""
            self.log(f"{self.desc}: {self.done}{of} {self.unit}{', ' + postfix if postfix else ''} "
                     f"({now - self.t0:.0f} s)")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
