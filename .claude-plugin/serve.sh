#!/usr/bin/env sh
# Starts the autoresearch MCP server (stdio) for Claude Code when this repository is installed as a
# plugin. Claude Code runs it from the user's project directory, so the research workspace
# (default ./research) lands in that project, not in the plugin's folder.
# Nothing here may write to stdout: stdout is the MCP protocol stream.
root="$(cd "$(dirname "$0")/.." && pwd)"
for exe in "${AUTORESEARCH_FLEET_BIN:-}" "$root/${FLEET_VENV:-.venv}/bin/autoresearch-fleet" "$(command -v autoresearch-fleet 2>/dev/null)"; do
  if [ -n "$exe" ] && [ -x "$exe" ]; then
    exec "$exe" serve --backend "${AUTORESEARCH_BACKEND:-local}" "$@"
  fi
done
# Not installed: one line (Claude Code shows the server's last stderr line when it fails to start)
echo "autoresearch-fleet is not installed: run '$root/fleet setup' once, then restart Claude Code (or set AUTORESEARCH_FLEET_BIN to an installed autoresearch-fleet)." >&2
exit 1
