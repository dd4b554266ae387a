"""``selfheal api``: uvicorn in the foreground until Ctrl-C or SIGTERM (uvicorn's own graceful stop)."""

from __future__ import annotations

import sys

from healing.errors import EXIT_UNKNOWN, SelfHealError


class ServeError(SelfHealError):
    """The server could not start (the address is in use, not available, or not allowed): exit 3."""

    exit_code = EXIT_UNKNOWN


def serve(host: str, port: int) -> int:
    """Serve create_app() on host:port; returns 0 after a graceful stop."""
    import uvicorn

    from healing.api.app import create_app

    app = create_app()
    print(f"starting the selfheal API on http://{host}:{port} (docs /docs, metrics /metrics)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=True,
                            server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind; the contract is one line of ours and exit 3
        pass
    if not server.started:  # uvicorn logged why (e.g. "address already in use") and gave up
        raise ServeError(f"cannot serve on http://{host}:{port}: the address is in use or not available (see above)")
    return 0
