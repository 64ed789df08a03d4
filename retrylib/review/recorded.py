"""``RecordedConfig``: the ``RetryConfig`` a ``HumanReviewNeededError`` carries.

``HumanReviewNeededError.config`` used to be ``RetryConfig.model_dump()``. It is now the
``RetryConfig`` itself, as this subclass, which also reads as that dict did
(``exc.config["max_attempts"]``, ``exc.config.get("debug_tool_name")``, ``"seed" in
exc.config``, ``exc.config == {...}``), so code written for the dict keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from retrylib.config import RetryConfig


class RecordedConfig(RetryConfig):
    """A ``RetryConfig`` that also answers the ``Mapping`` reads of its ``model_dump()``."""

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value, or ``default`` for a name that is not a field."""
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> Iterator[str]:
        """The field names, in declaration order."""
        return iter(_data_fields(type(self)))

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs, as ``model_dump().items()``."""
        return iter(self.model_dump().items())

    def values(self) -> Iterator[Any]:
        """The values, as ``model_dump().values()``."""
        return iter(self.model_dump().values())

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RetryConfig):
            return self.model_dump() == other.model_dump()
        if isinstance(other, Mapping):
            return self.model_dump() == dict(other)
        return NotImplemented

    __hash__ = RetryConfig.__hash__


def _data_fields(cls: type) -> list[str]:
    """The config's data fields: those a dump keeps (hooks, stages and strategies are objects)."""
    return [k for k, f in cls.model_fields.items() if not f.exclude]  # type: ignore[attr-defined]


def recorded(config: RetryConfig | Mapping[str, Any] | None) -> RecordedConfig | None:
    """``config`` as a :class:`RecordedConfig` (``None`` stays ``None``)."""
    if config is None:
        return None
    if isinstance(config, RecordedConfig):
        return config
    data = config.model_dump() if isinstance(config, RetryConfig) else dict(config)
    return RecordedConfig(**data)
