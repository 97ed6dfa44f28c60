"""`capgate local`: what this machine's Claude Code and Codex sessions cost at API prices,
read from their session files. `files` finds and reads them (the only I/O); `claude` and
`codex` turn lines into `Entry`s; `dedup`, `report` and `blocks` are pure; `render` prints."""
