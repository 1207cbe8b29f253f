"""Client-side validation: the catalogue's own rules (registry/catalogue/validation.py), so that
the client refuses exactly what a node would refuse, before sending anything. Values are sent as
the caller gave them; the node stores their canonical form, which these checks also return."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from registry.catalogue import validation
from registry.catalogue.validation import ValidationError

from .errors import ValidationFailed

T = TypeVar("T")


def checked(validate: Callable[[Any], T], value: Any) -> T:
    """``validate(value)`` (its canonical form), or ValidationFailed naming the field."""
    try:
        return validate(value)
    except ValidationError as e:
        raise ValidationFailed(str(e), field=e.field) from None


def check_tags(tags: Any) -> list[str]:
    if isinstance(tags, Iterable) and not isinstance(tags, str | bytes | bytearray | Mapping):
        tags = list(tags)  # NB: once, so that a generator is not used up by the check
    checked(validation.validate_tags, tags)
    return tags  # type: ignore[no-any-return]


def check_meta(meta: Any) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):  # NB: the catalogue also takes pairs; the wire needs a map
        raise ValidationFailed(f"meta must be a map of strings to strings, got {type(meta).__name__}",
                               field="meta")
    checked(validation.validate_meta, meta)
    return dict(meta)


def looks_like_hostport(text: str) -> bool:
    """The rule ``deregister`` uses to tell an address from an instance id: text with a ``:``
    (``10.0.0.5:8080``, ``[::1]:8080``, ``db:5432``) is HOST:PORT, and must then be a valid one;
    anything else is an instance id. Instance ids never contain ``:`` (the catalogue reserves it),
    so the rule is never ambiguous. ``by="id"``/``"address"`` forces either reading."""
    return ":" in text


_CHECK_FIELDS = ("kind", "ttl_ms", "url", "interval_ms", "timeout_ms", "failures", "successes",
                 "deregister_after_ms")


def check_check(check: Any) -> dict[str, Any] | None:
    """The wire map of a register's ``check`` (docs/client-protocol.md), checked with the
    catalogue's rules: None for no check; a map with the protocol's keys (absent ones take their
    defaults); or any object with those attributes (``registry.catalogue.model.Check``,
    ``CheckInfo``), whose ``kind`` may be an enum of the kind names."""
    if check is None:
        return None
    if isinstance(check, Mapping):
        fields = dict(check)
    elif all(hasattr(check, name) for name in _CHECK_FIELDS):
        fields = {name: getattr(check, name) for name in _CHECK_FIELDS}
    else:
        raise ValidationFailed(f"check must be a map or a Check, got {type(check).__name__}", field="check")
    kind = fields.get("kind")
    fields["kind"] = getattr(kind, "value", kind)  # NB: CheckKind.TTL -> "ttl"
    canonical = checked(validation.validate_check, fields)
    return {name: getattr(canonical, name) if name != "kind" else canonical.kind.value for name in _CHECK_FIELDS}
