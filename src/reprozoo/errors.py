"""The errors reprozoo raises on purpose (cog's `errors.py` shape).

`UserError` is what a user can fix: the CLI prints its one line, naming the fix, and exits 2.
Each concrete class also keeps a stdlib base (ValueError, RuntimeError, OSError, …) so callers that
catch those keep working. Anything that is not a `ReprozooError` is a bug in reprozoo.
"""

from __future__ import annotations

import signal


class ReprozooError(Exception):
    """Base of every error reprozoo raises on purpose."""


class UserError(ReprozooError):
    """Bad input or a missing resource: one line that names the fix, exit 2."""


class ConfigError(UserError, ValueError):
    """A setting or an input file the user can fix; the message is one line and names the fix.

    Defined here (and re-exported by `reprozoo.config`) so that the bounded parsers in
    `reprozoo.safeyaml`, which config imports, can raise it too."""


class Preempted(ReprozooError):
    """SIGTERM/SIGINT stopped training after a checkpoint (`reprozoo.resume` raises it); the command
    exits 128 + the signal. Here, not in `resume`: the CLI catches it without importing Lightning."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
