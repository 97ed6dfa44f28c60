"""`capgate mcp` and `capgate statusline`: a developer's own costs and capgate budgets
inside Claude Code. `budget` reads the server's `/v1/me` and forecasts each window;
`tools` answers the MCP tools from the local session files (`capgate.local`); `server`
wires them into the official MCP SDK."""
