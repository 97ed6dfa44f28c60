"""Opt-in logging of request and answer bodies: redaction (`redact.py`), the bounded
capture of one request (`capture.py`) and the service that writes captures off the
request path and deletes old ones (`service.py`). docs/security.md#prompt-and-answer-logging."""
