"""`python -m capgate`: the same as the `capgate` command."""

from capgate.cli.entry import main

main()
