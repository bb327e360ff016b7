"""Expanding ids into the objects the emulator keeps, along a request's `expand[]` paths.

Paths arrive accepted by `shapes.check_expand`; an id of an unmodelled object is an error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from devtools.stripe_emulator import shapes
from devtools.stripe_emulator.state import StripeEmulatorError, _invalid


class Objects(NamedTuple):
    """Where expansions find objects: kept ones by class and id; lists made on request."""

    stores: Mapping[type, Mapping[str, dict[str, Any]]]
    # (class, field) -> the list object that field holds when expanded (Session.line_items)
    lists: Mapping[tuple[type, str], Callable[[dict[str, Any]], dict[str, Any]]]


def expand(
    cls: type, obj: dict[str, Any], paths: list[str], objects: Objects, prefix: str = ""
) -> dict[str, Any]:
    """`obj` (of `cls`) with `paths` expanded; `obj` itself is left as it is."""
    if not paths:
        return obj
    shown = dict(obj)
    for head, deeper in _by_first_field(paths).items():
        path = f"{prefix}{head}"
        make_list = objects.lists.get((cls, head))
        item = shapes.field_class(cls, head)
        if make_list is not None and item is not None:
            listing = make_list(obj)
            item_paths = [rest for p in deeper if (rest := p.partition(".")[2])]
            listing["data"] = [
                expand(item, entry, item_paths, objects, f"{path}.data.")
                for entry in listing["data"]
            ]
            shown[head] = listing
            continue
        value = shown.get(head)
        if value is None:
            continue
        if isinstance(value, str):
            found = objects.stores.get(item, {}).get(value) if item is not None else None
            if found is None:
                raise _not_modelled(head, prefix + ".".join([head, *deeper[:1]]))
            value = found
        if isinstance(value, dict) and item is not None:
            shown[head] = expand(item, value, deeper, objects, f"{path}.")
    return shown


def _by_first_field(paths: list[str]) -> dict[str, list[str]]:
    """`["a", "a.b", "c.d"]` -> `{"a": ["b"], "c": ["d"]}`."""
    grouped: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        grouped.setdefault(head, [])
        if rest:
            grouped[head].append(rest)
    return grouped


def _not_modelled(field: str, path: str) -> StripeEmulatorError:
    return _invalid(
        f"The Stripe emulator does not model `{field}` objects, so it cannot expand {path} "
        "(docs/emulator.md).",
        "expand",
    )
