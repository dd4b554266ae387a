"""PEP 562 lazy exports for package ``__init__`` files.

`selfheal` imports every area's ``commands`` module at start-up, which runs the package's
``__init__`` first; packages therefore name their public objects here and load the defining
module only when a name is first used, so `selfheal --help` never imports NumPy, OpenCV or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> tuple[
        list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__all__, __getattr__, __dir__)`` for ``package`` whose names live in ``exports``
    (name → submodule); a loaded name is cached in ``namespace`` (the package's globals)."""
    names = sorted(exports)

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return names

    return names, getattr_, dir_
