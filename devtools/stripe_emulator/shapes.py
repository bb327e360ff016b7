"""Response objects shaped by the pinned stripe-python's resource classes, their expandable
fields, and checks of an object against its class; omitted.txt says which optional fields
Stripe leaves out rather than sending null (docs/emulator.md "Responses")."""

from __future__ import annotations

import decimal
import functools
import importlib
import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union

import stripe
from stripe._list_object import ListObject
from stripe._stripe_object import StripeObject, UntypedStripeObject

_OMITTED_TABLE = Path(__file__).with_name("omitted.txt")


def _parse_omitted(table: str) -> dict[str, frozenset[str]]:
    lines = (line for line in table.splitlines() if not line.startswith("#"))
    entries = re.split(r"\n(?=\S)", "\n".join(lines).strip())
    return {
        name: frozenset(fields.split())
        for name, _, fields in (entry.partition(":") for entry in entries)
    }


# Fields the pinned stripe-python has that omitted.txt's stripe-node does not know yet, and
# that Stripe sends only when set (like the excluded_… list beside it).
NEWER_THAN_NODE: dict[str, frozenset[str]] = {
    "Session": frozenset({"allowed_payment_method_types"}),
}
# stripe-python class (qualified name) -> the fields Stripe omits unless they apply.
OMITTED: dict[str, frozenset[str]] = {
    name: fields | NEWER_THAN_NODE.get(name, frozenset())
    for name, fields in _parse_omitted(_OMITTED_TABLE.read_text(encoding="utf-8")).items()
}
# Stripe refuses deeper expansions (docs.stripe.com/expand: "up to four levels").
MAX_EXPAND_DEPTH = 4


class _StripeNames(dict[str, Any]):
    """Names the SDK's modules import only for type checkers, found in `stripe` when asked."""

    def __missing__(self, name: str) -> Any:
        for candidate in (name, name.removesuffix("Resource")):
            found = getattr(stripe, candidate, None)
            if isinstance(found, type):
                return found
        raise KeyError(name)


@functools.cache
def fields(cls: type) -> dict[str, Any]:
    """A resource class's fields and their types, forward references resolved."""
    own: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, StripeObject) and klass not in (StripeObject, UntypedStripeObject):
            own.update(
                {
                    name: hint
                    for name, hint in vars(klass).get("__annotations__", {}).items()
                    if not name.startswith("_") and typing.get_origin(hint) is not typing.ClassVar
                }
            )
    holder = types.SimpleNamespace(__annotations__=own)
    module = sys.modules[cls.__module__]
    names = _StripeNames({**vars(module), **_enclosing_names(cls)})
    hints = typing.get_type_hints(holder, globalns=names, localns=names)
    return {
        name: hint
        for name, hint in hints.items()
        if typing.get_origin(hint) is not typing.ClassVar and name != "OBJECT_NAME"
    }


def _enclosing_names(cls: type) -> dict[str, Any]:
    """Nested classes (Session.AutomaticTax.Liability) name their siblings and parents' members."""
    names: dict[str, Any] = {}
    path = cls.__qualname__.split(".")
    node: Any = sys.modules[cls.__module__]
    for part in path:
        node = getattr(node, part)
        names.update({key: value for key, value in vars(node).items() if isinstance(value, type)})
    return names


def resource(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    return typing.cast(type, getattr(importlib.import_module(module_name), name))


# --- building --------------------------------------------------------------------------------


def _optional(hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
    return False, hint


def default(hint: Any) -> Any:
    """The value an always-present field takes when the emulator has nothing to say."""
    optional, inner = _optional(hint)
    if optional:
        return None
    origin = typing.get_origin(inner)
    if origin is list:
        return []
    if origin is Literal:
        return typing.get_args(inner)[0]
    if origin in (Union, types.UnionType):
        return default(typing.get_args(inner)[0])
    if _is_hash(inner):
        return {}
    if isinstance(inner, type) and issubclass(inner, StripeObject):
        return build(inner, {})
    return {bool: False, int: 0, float: 0.0, str: ""}.get(inner)


def build(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """An object of `cls`: `values`, then a default for every other field Stripe always sends.

    A value given as a dict (or a list of dicts) for a nested object's field is built the same way.
    """
    hints = fields(cls)
    omitted = omitted_fields(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise KeyError(f"{cls.__qualname__} has no fields {sorted(unknown)}")
    built = {name: _nested(hint, values[name]) if name in values else default(hint)
             for name, hint in hints.items() if name in values or name not in omitted}  # fmt: skip
    # Stripe's order: id and object first, then the rest alphabetically.
    first = [name for name in ("id", "object") if name in built]
    return {name: built[name] for name in [*first, *sorted(set(built) - set(first))]}


def _nested(hint: Any, value: Any) -> Any:
    """A given value; a dict for a nested object (not an expandable id's object) is built."""
    _, inner = _optional(hint)
    if typing.get_origin(inner) is list and isinstance(value, list):
        item = typing.get_args(inner)[0]
        return [_nested(item, entry) for entry in value]
    if isinstance(value, dict) and _object_class(inner) is not None and not _is_hash(inner):
        return build(inner, value)
    return value


def omitted_fields(cls: type) -> frozenset[str]:
    """The class's fields that Stripe leaves out unless they apply (OMITTED)."""
    return OMITTED.get(cls.__qualname__, frozenset())


# The resource classes the emulator serves.
SERVED = (
    "stripe.checkout.Session",
    "stripe.PaymentIntent",
    "stripe.Charge",
    "stripe.Refund",
    "stripe.Dispute",
    "stripe.WebhookEndpoint",
    "stripe.LineItem",
    "stripe.Price",
    "stripe.Product",
    "stripe.Event",
)


def warm() -> None:
    """Read the served classes' annotations now, so that no request waits for it."""
    for path in SERVED:
        fields(resource(path))
    fields(session_class().CustomerDetails)  # type: ignore[attr-defined]


def _is_hash(hint: Any) -> bool:
    """UntypedStripeObject[str]: metadata and the like, any keys."""
    klass = typing.get_origin(hint) or hint
    return isinstance(klass, type) and issubclass(klass, UntypedStripeObject)


class NotConvertible(ValueError):
    """A parameter's value does not fit the response field of the same name."""


def from_params(hint: Any, value: Any) -> Any:
    """A form-decoded parameter as the response field `hint` holds it ("true" -> True, …)."""
    optional, inner = _optional(hint)
    origin = typing.get_origin(inner)
    if value == "" and optional:
        return None
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(inner):
            try:
                return from_params(arg, value)
            except NotConvertible:
                continue
        raise NotConvertible(inner)
    if origin is list and isinstance(value, list):
        return [from_params(typing.get_args(inner)[0], item) for item in value]
    if _is_hash(inner) and isinstance(value, dict):
        return {key: item for key, item in value.items() if item}
    if isinstance(inner, type) and issubclass(inner, StripeObject) and isinstance(value, dict):
        hints = fields(typing.cast(type, inner))
        return build(inner, {k: from_params(hints[k], v) for k, v in value.items() if k in hints})
    if isinstance(value, str):
        if origin is Literal:
            if value in typing.get_args(inner):
                return value
        elif inner is bool and value in ("true", "false"):
            return value == "true"
        elif inner is int and value.lstrip("-").isdigit():
            return int(value)
        elif inner is float:
            return float(value)
        elif inner in (str, decimal.Decimal):
            return value
    raise NotConvertible(inner)


def session_class() -> type:
    return resource("stripe.checkout.Session")


# --- expansions --------------------------------------------------------------------------------


def expandable(cls: type) -> dict[str, type]:
    """Fields that hold an id or, expanded, the object: `ExpandableField[X]` (and list includes)."""
    found: dict[str, type] = {}
    for name, hint in fields(cls).items():
        _, inner = _optional(hint)
        target = _expansion_target(inner)
        if target is not None:
            found[name] = target
    return found


def _expansion_target(hint: Any) -> type | None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType) and str in args:
        objects = [arg for arg in args if isinstance(arg, type) and issubclass(arg, StripeObject)]
        return objects[0] if objects else None
    if typing.get_origin(hint) is ListObject or hint is ListObject:
        return ListObject
    return None


def check_expand(cls: type, paths: list[str]) -> None:
    """Raise ValueError naming the first path that no SDK field allows expanding."""
    for path in paths:
        parts = path.split(".")
        if len(parts) > MAX_EXPAND_DEPTH:
            raise ValueError(
                f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property."
            )
        _check_path(cls, parts, path)


def check_list_expand(item: type, paths: list[str]) -> None:
    """The same for a list of `item`s: each path starts with `data.`, which is not a level."""
    for path in paths:
        head, _, rest = path.partition(".")
        if head != "data" or not rest:
            raise ValueError(f"This property cannot be expanded ({path}).")
        try:
            check_expand(item, [rest])
        except ValueError as err:
            raise ValueError(str(err).replace(f"({rest})", f"({path})")) from None


def field_class(cls: type, name: str) -> type | None:
    """The object class a field holds: an expandable id's, a nested object's, a list's items'."""
    _, inner = _optional(fields(cls)[name])
    if typing.get_origin(inner) is ListObject:
        return _object_class(typing.get_args(inner)[0])
    target = _expansion_target(inner)
    return target if target not in (None, ListObject) else _object_class(inner)


def _check_path(cls: type, parts: list[str], path: str) -> None:
    head, rest = parts[0], parts[1:]
    hint = fields(cls).get(head)
    if hint is None:
        raise ValueError(f"This property cannot be expanded ({path}).")
    _, inner = _optional(hint)
    target = _expansion_target(inner)
    if typing.get_origin(inner) is ListObject:
        item = typing.get_args(inner)[0]
        if rest and rest[0] == "data" and isinstance(item, type):
            if len(rest) > 1:
                _check_path(item, rest[1:], path)
            return
    if target is None and not rest:
        raise ValueError(f"This property cannot be expanded ({path}).")
    if rest:
        nested = target if target not in (None, ListObject) else _object_class(inner)
        if nested is None:
            raise ValueError(f"This property cannot be expanded ({path}).")
        _check_path(nested, rest, path)


def _object_class(hint: Any) -> type | None:
    if isinstance(hint, type) and issubclass(hint, StripeObject):
        return hint
    return None


# --- checking objects against their classes ----------------------------------------------------


def problems(cls: type, value: Any, path: str = "") -> list[str]:
    """How a JSON object differs from what its SDK class declares (empty when it conforms)."""
    omitted = omitted_fields(cls)
    if not isinstance(value, dict):
        return [f"{path or cls.__qualname__}: expected an object, got {json.dumps(value)[:60]}"]
    found: list[str] = []
    hints = fields(cls)
    for name in sorted(set(value) - set(hints)):
        found.append(f"{path}{name}: not a field of {cls.__qualname__}")
    for name, hint in hints.items():
        where = f"{path}{name}"
        if name not in value:
            if name not in omitted:
                found.append(f"{where}: missing (Stripe always sends it)")
            continue
        found.extend(_type_problems(hint, value[name], where))
    return found


def _type_problems(hint: Any, value: Any, where: str) -> Iterator[str]:
    optional, inner = _optional(hint)
    if value is None:
        if not optional:
            yield f"{where}: null, but the SDK declares it always set"
        return
    origin = typing.get_origin(inner)
    if origin in (Union, types.UnionType):
        errors = [list(_type_problems(arg, value, where)) for arg in typing.get_args(inner)]
        if all(errors):
            yield f"{where}: {json.dumps(value)[:60]} matches none of {inner}"
    elif origin is Literal:
        if value not in typing.get_args(inner):
            yield f"{where}: {value!r} is not one of {typing.get_args(inner)}"
    elif origin is list:
        if not isinstance(value, list):
            yield f"{where}: expected a list"
        else:
            for index, item in enumerate(value):
                yield from _type_problems(typing.get_args(inner)[0], item, f"{where}[{index}]")
    elif origin is ListObject:
        yield from _list_problems(typing.get_args(inner)[0], value, where)
    elif _is_hash(inner):
        strings = typing.get_args(inner) == (str,)
        if not isinstance(value, dict) or (
            strings and not all(isinstance(v, str) for v in value.values())
        ):
            yield f"{where}: expected a hash" + (" of strings" if strings else "")
    elif isinstance(inner, type) and issubclass(inner, StripeObject):
        yield from problems(inner, value, f"{where}.")
    elif inner is decimal.Decimal:
        if not (isinstance(value, str) and _is_decimal(value)):
            yield f"{where}: expected a decimal string, got {json.dumps(value)[:60]}"
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            yield f"{where}: expected a number"
    elif isinstance(inner, type) and (
        isinstance(value, bool) != (inner is bool) or not isinstance(value, inner)
    ):
        yield f"{where}: expected {inner.__name__}, got {json.dumps(value)[:60]}"


def _list_problems(item: Any, value: Any, where: str) -> Iterator[str]:
    if not isinstance(value, dict) or value.get("object") != "list":
        yield f"{where}: expected a list object"
        return
    for key, kind in (("has_more", bool), ("url", str), ("data", list)):
        if not isinstance(value.get(key), kind):
            yield f"{where}.{key}: expected {kind.__name__}"
    for index, entry in enumerate(value.get("data") or ()):
        yield from _type_problems(item, entry, f"{where}.data[{index}]")


def _is_decimal(text: str) -> bool:
    try:
        return decimal.Decimal(text).is_finite()
    except decimal.InvalidOperation:
        return False
