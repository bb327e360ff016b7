"""Request validation derived from the pinned stripe-python's generated `*Params` TypedDicts.

Only the shape is checked, values stay strings; the rest is rules.py (docs/emulator.md)."""

from __future__ import annotations

import decimal
import functools
import importlib
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import typing_extensions
from stripe._request_options import RequestOptions

from devtools.stripe_emulator.state import StripeEmulatorError, _invalid

# --- the compiled schema ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    """A leaf: `kind` is str, int, float, decimal, bool or enum (then `values` holds the enum)."""

    kind: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Array:
    item: Node


@dataclass(frozen=True)
class Hash:
    """A hash with free keys (metadata and the like): Dict[str, X]."""

    value: Node


@dataclass
class Obj:
    """A TypedDict: its fields, and which of them are required. Filled after creation (cycles)."""

    name: str
    fields: dict[str, Node] = field(default_factory=dict)
    required: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OneOf:
    """A Union: the alternatives, and whether an empty string (unset) is one of them."""

    options: tuple[Node, ...]
    emptiable: bool


Node = Scalar | Array | Hash | Obj | OneOf

_REQUEST_OPTIONS = frozenset(RequestOptions.__annotations__)
_compiled: dict[type, Obj] = {}


def _own_hints(typed_dict: type) -> dict[str, Any]:
    """The TypedDict's parameters (not RequestOptions'), their forward references resolved."""
    module = sys.modules[typed_dict.__module__]
    own = {
        name: hint
        for name, hint in typed_dict.__annotations__.items()
        if name not in _REQUEST_OPTIONS
    }
    # The TypedDict's annotations merge its bases', whose names its own module may not import;
    # resolving only its own parameters, in its own module, is what get_type_hints can do.
    holder = types.SimpleNamespace(__annotations__=own)
    return typing.get_type_hints(holder, globalns=vars(module))


def compile_params(typed_dict: type) -> Obj:
    """The schema of a stripe-python Params TypedDict (cached: nested types are shared)."""
    found = _compiled.get(typed_dict)
    if found is not None:
        return found
    obj = _compiled[typed_dict] = Obj(typed_dict.__name__)
    hints = _own_hints(typed_dict)
    obj.fields = {name: _node(hint) for name, hint in hints.items()}
    obj.required = frozenset(typed_dict.__required_keys__) - _REQUEST_OPTIONS  # type: ignore[attr-defined]
    return obj


def _node(hint: Any) -> Node:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _union(typing.get_args(hint))
    if origin is Literal:
        return Scalar("enum", tuple(str(value) for value in typing.get_args(hint)))
    if origin is list:
        return Array(_node(typing.get_args(hint)[0]))
    if origin is dict:
        return Hash(_node(typing.get_args(hint)[1]))
    if typing_extensions.is_typeddict(hint):
        return compile_params(hint)
    if getattr(hint, "__name__", "") == "UntypedStripeObject" or origin is not None:
        return Hash(Scalar("str"))  # metadata-like objects with any keys
    kinds = {str: "str", int: "int", float: "float", bool: "bool", decimal.Decimal: "decimal"}
    if hint in kinds:
        return Scalar(kinds[hint])
    raise TypeError(f"the emulator cannot check parameters of type {hint!r}")


def _union(args: tuple[Any, ...]) -> Node:
    literals: list[str] = []
    others: list[Node] = []
    for arg in args:
        if typing.get_origin(arg) is Literal:
            literals.extend(str(value) for value in typing.get_args(arg))
        elif getattr(arg, "__name__", "") == "UntypedStripeObject":
            continue  # always next to a Dict[str, …], which says more
        else:
            others.append(_node(arg))
    emptiable = "" in literals
    values = tuple(value for value in literals if value)
    if values:
        # `Literal[...] | str` is the SDK leaving room for values newer than itself; the API
        # accepts only the listed ones, so the plain `str` alternative goes.
        others = [node for node in others if node != Scalar("str")]
        others.insert(0, Scalar("enum", values))
    if len(others) == 1 and not emptiable:
        return others[0]
    return OneOf(tuple(others), emptiable)


# --- endpoints ----------------------------------------------------------------------------------

# Endpoint name (as api.py's router names it) -> the dotted path of its Params TypedDict.
_ENDPOINTS: dict[str, str] = {}
# Endpoint name -> parameter -> the API version (date) that removed it, for older versions.
_REMOVED: dict[str, dict[str, tuple[str, Node]]] = {}


def register(endpoint: str, typed_dict_path: str) -> None:
    """Check `endpoint`'s parameters against a TypedDict: "stripe.params.RefundCreateParams"."""
    _ENDPOINTS[endpoint] = typed_dict_path
    _schema.cache_clear()


def register_removed(endpoint: str, param: str, removed_in: str, node: Node) -> None:
    """A parameter the pinned SDK no longer has, that API versions before `removed_in` take."""
    _REMOVED.setdefault(endpoint, {})[param] = (removed_in, node)
    _schema.cache_clear()


def registered() -> dict[str, str]:
    return dict(_ENDPOINTS)


@functools.cache
def _schema(endpoint: str) -> Obj:
    module_name, _, name = _ENDPOINTS[endpoint].rpartition(".")
    return compile_params(getattr(importlib.import_module(module_name), name))


def schema(endpoint: str) -> Obj:
    return _schema(endpoint)


def warm() -> None:
    """Compile every registered TypedDict now, so that no request waits for it."""
    for endpoint in _ENDPOINTS:
        _schema(endpoint)
    api_versions()


def validate(endpoint: str, params: Mapping[str, Any], version_date: str) -> None:
    """Raise Stripe's 400 for the first parameter that the endpoint's TypedDict refuses."""
    if endpoint not in _ENDPOINTS:
        return
    obj = _schema(endpoint)
    removed = {
        name: node
        for name, (removed_in, node) in _REMOVED.get(endpoint, {}).items()
        if version_date < removed_in
    }
    if removed:
        obj = Obj(obj.name, {**obj.fields, **removed}, obj.required)
    _check_obj(obj, params, "")


@functools.cache
def api_versions() -> frozenset[str]:
    """Every API version the pinned SDK knows: the values a webhook endpoint may be pinned to."""
    from stripe.params import WebhookEndpointCreateParams

    node = compile_params(WebhookEndpointCreateParams).fields["api_version"]
    if not (isinstance(node, Scalar) and node.kind == "enum"):
        raise TypeError("WebhookEndpointCreateParams.api_version is no longer an enum")
    return frozenset(node.values)


# --- checking ---------------------------------------------------------------------------------


def _name(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def _check(node: Node, value: Any, param: str) -> None:
    if isinstance(node, OneOf):
        _check_one_of(node, value, param)
    elif value == "":
        raise _empty(param)
    elif isinstance(node, Obj):
        if not isinstance(value, dict):
            raise _invalid("Invalid object", param)
        _check_obj(node, value, param)
    elif isinstance(node, Array):
        items = _as_list(value)
        if items is None:
            raise _invalid("Invalid array", param)
        for index, item in enumerate(items):
            _check(node.item, item, f"{param}[{index}]")
    elif isinstance(node, Hash):
        if not isinstance(value, (dict, list)):
            raise _invalid("Invalid hash", param)
        entries = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in entries:
            # An empty value in a hash unsets that key (metadata[k]=).
            if not (item == "" and node.value == Scalar("str")):
                _check(node.value, item, f"{param}[{key}]")
    else:
        _check_scalar(node, value, param)


def _check_obj(obj: Obj, values: Mapping[str, Any], prefix: str) -> None:
    for key in values:
        if key not in obj.fields:
            raise _unknown(_name(prefix, key))
    for key in sorted(obj.required):
        if key not in values:
            raise StripeEmulatorError(
                400,
                f"Missing required param: {_name(prefix, key)}.",
                code="parameter_missing",
                param=_name(prefix, key),
            )
    for key, value in values.items():
        _check(obj.fields[key], value, _name(prefix, key))


def _check_one_of(node: OneOf, value: Any, param: str) -> None:
    if value == "":
        if node.emptiable:
            return
        raise _empty(param)
    shaped: list[Node]
    if isinstance(value, dict):
        shaped = [o for o in node.options if isinstance(o, (Obj, Hash))]
    elif isinstance(value, list):
        shaped = [o for o in node.options if isinstance(o, (Array, Hash))]
    else:
        shaped = [o for o in node.options if isinstance(o, Scalar)]
    if not shaped:
        kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else ""
        expected = _describe(node.options[0]) if node.options else "value"
        raise _invalid(f"Invalid {expected}" if kind else f"Invalid {expected}: {value}", param)
    first_error: StripeEmulatorError | None = None
    for option in shaped:
        try:
            _check(option, value, param)
        except StripeEmulatorError as err:
            first_error = first_error or err
        else:
            return
    assert first_error is not None
    raise first_error


def _describe(node: Node) -> str:
    if isinstance(node, Obj):
        return "object"
    if isinstance(node, Array):
        return "array"
    if isinstance(node, Hash):
        return "hash"
    if isinstance(node, OneOf):
        return _describe(node.options[0]) if node.options else "value"
    return {"str": "string", "enum": "string"}.get(node.kind, node.kind)


def _check_scalar(node: Scalar, value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _invalid(f"Invalid {_describe(node)}", param)
    check = _SCALAR_CHECKS.get(node.kind)
    if check is not None:
        check(node, value, param)


def _check_enum(node: Scalar, value: str, param: str) -> None:
    if value not in node.values:
        raise _invalid(f"Invalid {param}: must be one of {_one_of(node.values)}", param)


def _one_of(values: tuple[str, ...]) -> str:
    if len(values) < 3:
        return " or ".join(values)
    return f"{', '.join(values[:-1])}, or {values[-1]}"


def _check_int(_: Scalar, value: str, param: str) -> None:
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()):
        raise StripeEmulatorError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        )


def _check_bool(_: Scalar, value: str, param: str) -> None:
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {value}", param)


def _check_decimal(_: Scalar, value: str, param: str) -> None:
    try:
        number = decimal.Decimal(value)
    except decimal.InvalidOperation:
        number = None
    if number is None or not number.is_finite() or not value.isascii():
        raise _invalid(f"Invalid decimal: {value}", param)


def _check_float(_: Scalar, value: str, param: str) -> None:
    try:
        float(value)
    except ValueError:
        raise _invalid(f"Invalid float: {value}", param) from None


_SCALAR_CHECKS: dict[str, Callable[[Scalar, str, str], None]] = {
    "enum": _check_enum,
    "int": _check_int,
    "bool": _check_bool,
    "decimal": _check_decimal,
    "float": _check_float,
}


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]  # metadata-named arrays stay hashes
    return None


def _unknown(param: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param
    )


def _empty(param: str) -> StripeEmulatorError:
    return StripeEmulatorError(
        400,
        f"You passed an empty string for '{param}'. We assume empty values are an attempt to "
        f"unset a parameter; however '{param}' cannot be unset. You should remove '{param}' from "
        "your request or supply a non-empty value.",
        code="parameter_invalid_empty",
        param=param,
    )
