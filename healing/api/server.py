"""``selfheal api``: uvicorn in the foreground until Ctrl-C or SIGTERM (uvicorn's own graceful stop)."""

from __future__ import annotations

import sys


def serve(host: str, port: int) -> int:
    """Serve create_app() on host:port; returns the exit code."""
    import uvicorn

    from healing.api.app import create_app

    app = create_app()
    print(f"selfheal API on http://{host}:{port} (docs http://{host}:{port}/docs, metrics /metrics)",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True,
                            server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally after a graceful stop; a failed start (port in use) leaves started False.
    return 0 if server.started else 3
