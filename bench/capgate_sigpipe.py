#!/usr/bin/env python3
"""`capgate` with SIGPIPE ignored: a bench-only workaround, used by bench/run unless
`--as-shipped` is given.

capgate's CLI entry point sets SIGPIPE to SIG_DFL (so that `capgate usage | head` exits
quietly), and `serve` keeps it. A client that closes its connection while capgate is
writing to it then kills the whole server with SIGPIPE; wrk does exactly that when a run
ends. With SIGPIPE ignored the write fails with EPIPE instead, as it does in any Python
program by default. Ignoring it costs nothing, so the figures are those a fixed capgate
would give. bench/run checks /proc/PID/status and reports which way capgate is running.

    python bench/capgate_sigpipe.py serve --config ...   # same arguments as `capgate`
"""

import signal
import sys

_real_signal = signal.signal


def _signal(signum, handler):  # type: ignore[no-untyped-def]
    if signum == signal.SIGPIPE:
        handler = signal.SIG_IGN
    return _real_signal(signum, handler)


signal.signal = _signal

from capgate.cli.main import main  # noqa: E402 - after the patch, on purpose

sys.argv[0] = "capgate"
main()
