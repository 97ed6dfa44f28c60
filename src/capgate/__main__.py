"""`python -m capgate`: the same as the `capgate` command."""

from capgate.cli.main import main

main()
