"""``python -m capgate.mock --host 127.0.0.1 --port 0``: run the mock upstream standalone."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from capgate.mock.runner import serve_forever


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m capgate.mock",
        description="Mock Anthropic/OpenAI upstream for capgate tests, benchmarks and demos.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="port to bind; 0 picks a free one (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
