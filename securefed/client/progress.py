"""Progress for downloads, training and uploads: tqdm on a terminal, clean log lines otherwise."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from securefed.logs import get_logger, log

logger = get_logger("client.progress")


class Progress:
    """``with Progress("training", total=steps, unit="step") as p: p.update(1, loss=...)``."""

    def __init__(self, what: str, total: int, unit: str = "it", *, tty: bool | None = None, **fields) -> None:
        self.what, self.total, self.unit, self.fields = what, max(int(total), 0), unit, fields
        self.n = 0
        self._bar = None
        self._last_pct = -1
        self._t0 = time.monotonic()
        use_tty = sys.stderr.isatty() if tty is None else tty
        if use_tty:
            scale = unit == "B"
            self._bar = tqdm(total=self.total, desc=what, unit=unit, unit_scale=scale, leave=False, file=sys.stderr)

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()})
            return
        pct = int(100 * self.n / self.total) if self.total else 100
        if pct // 25 > self._last_pct // 25 or self.n == self.total:  # a line at 0/25/50/75/100 %
            self._last_pct = pct
            log(logger, self.what, done=self.n, total=self.total, unit=self.unit, **self.fields, **postfix)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
