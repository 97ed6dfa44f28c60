"""The program on a developer's machine in hook mode: stdlib-only files the server serves
(hook.py, install.py, watchdog.py) and `capgate hook ...` imports."""
