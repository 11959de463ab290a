"""Name -> record lookup shared by activations, losses, initializers and optimizers."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def unknown_name(kind: str, name: object, valid: list[str]) -> ValueError:
    """A ValueError that names the bad value, lists the valid ones and suggests the closest match."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}.{hint} Valid names: {', '.join(sorted(valid))}.")


def lookup(kind: str, value: str | T, registry: Mapping[str, T], record_type: type) -> T:
    """Return ``value`` if it is already a record, else the record registered under that name."""
    if isinstance(value, record_type):
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        raise TypeError(
            f"Expected a {kind} name (str) or a {record_type.__name__} record, got {type(value).__name__}: {value!r}."
        )
    key = value.lower().replace("-", "_")
    if key not in registry:
        raise unknown_name(kind, value, list(registry))
    return registry[key]
