"""Warnings and notes go through one logger, `reprozoo`, printed as `reprozoo: …` on stderr.

The CLI's `main()` calls `setup()`; library code only ever calls `log.warning(…)` / `log.info(…)`.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("reprozoo")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at each record: ClearML and pytest swap it after set-up."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def setup(level: int = logging.INFO) -> None:
    """Idempotent: one `reprozoo: message` handler on the `reprozoo` logger, not propagated to root."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("reprozoo: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
