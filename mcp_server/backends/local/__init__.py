"""The local backend package: slots on this machine (see backend.py for the whole picture).

`LocalBackend` is re-exported here (`from mcp_server.backends.local import LocalBackend`);
importing this package imports the backend module and what it needs, nothing heavier.
"""

from mcp_server.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
