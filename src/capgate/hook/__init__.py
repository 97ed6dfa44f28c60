"""Hook mode: per-person limits for Claude Code and Codex running on developers' own
machines, enforced by managed hooks that ask the server before every prompt
(docs/budgets.md#hook-mode-what-is-guaranteed).

The pure parts live here: `gate.py` (lease ids, the model decided, the worst case a
prompt holds, the refusal message), `report.py` (reports validated and priced),
`otlp.py` (Claude Code's OpenTelemetry log records as calls), `bodies.py` (the other
request bodies), `view.py` (limit rows and the offline cache), `person.py` (status,
logout, timezone; why a turn stops). `http/hook.py` serves
them; `client/` holds the files the server hands to machines (hook, watchdog,
installer)."""
