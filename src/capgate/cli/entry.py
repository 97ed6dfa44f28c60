"""The `capgate` command's entry point. `capgate local ...` runs its own Typer app
directly, so it imports neither the HTTP client, the configuration nor the database
drivers that the other commands need (a quarter of a second on every report); a
well-formed report command does not even import typer (`capgate.local.argv`); everything
else goes to the full CLI, `capgate.cli.main`."""

from __future__ import annotations

import gc
import signal
import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "local":
        if sys.platform != "win32":
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `capgate local | head` exits quietly
        # A report keeps ~10^5 small objects to its end and makes no cycles: the cyclic
        # collector would only walk them again and again (a tenth of its time).
        gc.disable()
        from capgate.local.argv import run_quick

        if run_quick(sys.argv[2:]):  # a report, without importing typer (nor pydantic)
            return
        from capgate.cli.local import app

        app(prog_name="capgate local", args=sys.argv[2:])
        return
    from capgate.cli.main import main as full

    full()
