"""The image guide's ways of starting the server, with this project's module name:

    uvicorn healing.api.main:app --host 0.0.0.0 --port 8000
    python -m healing.api.main [--host H] [--port P]        (the same as `selfheal api`)

``app`` is built on first access (PEP 562), so importing this module costs nothing until a server asks.
"""

from __future__ import annotations

import sys
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from healing.api.app import create_app

        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from healing.cli import main

    sys.exit(main(["api", *sys.argv[1:]]))
