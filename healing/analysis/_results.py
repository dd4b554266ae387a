"""Result objects that read both ways: ``result.edge_count`` and ``result["edge_count"]``.

The guide indexes the analyzer's results like dicts (``fourier_result['dominant_frequency']``) and
the detector's like objects (``fourier_result.dominant_frequency``); both return the same object.
The mapping view is the result's ``to_dict()`` — the JSON shape `selfheal analyze` prints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class ResultMapping(Mapping[str, Any]):
    """Read-only mapping over ``self.to_dict()`` for a dataclass result (which keeps its own ``__eq__``)."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
