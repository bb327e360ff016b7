"""Stripe's list endpoints: `created` ranges, `limit`, cursors, and the list object they answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devtools.stripe_emulator.form_params import parse_int
from devtools.stripe_emulator.state import StripeEmulatorError, _invalid

DEFAULT_LIMIT, MAX_LIMIT = 10, 100
PAGINATION_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand"})
_RANGE_OPERATORS = ("gt", "gte", "lt", "lte")


def parse_created(value: Any, param: str = "created") -> Callable[[int], bool]:
    """A test for a `created` timestamp: `created=T` or `created[gte]=T` and its kin."""
    if value is None:
        return lambda _: True
    if isinstance(value, str):
        exact = parse_int(value, param)
        return lambda created: created == exact
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", param)
    bounds = {}
    for name, bound in value.items():
        if name not in _RANGE_OPERATORS:
            raise _invalid(f"Received unknown parameter: {param}[{name}]", f"{param}[{name}]")
        bounds[name] = parse_int(bound, f"{param}[{name}]")

    def matches(created: int) -> bool:
        return (
            ("gt" not in bounds or created > bounds["gt"])
            and ("gte" not in bounds or created >= bounds["gte"])
            and ("lt" not in bounds or created < bounds["lt"])
            and ("lte" not in bounds or created <= bounds["lte"])
        )

    return matches


def page(
    items: Sequence[dict[str, Any]],
    keep: Callable[[dict[str, Any]], bool],
    params: dict[str, Any],
    url: str,
    object_name: str,
) -> dict[str, Any]:
    """One page of the `items` (newest first) that `keep` accepts, as Stripe's list object.

    `starting_after` pages towards older items and `ending_before` towards newer ones, as the
    SDK's auto-pagination expects. A cursor is any known object, even one the filters leave out;
    an unknown one is an error, as on Stripe.
    """
    limit = DEFAULT_LIMIT
    if params.get("limit") is not None:
        limit = parse_int(params["limit"], "limit")
        if not 1 <= limit <= MAX_LIMIT:
            raise _invalid(
                f"This value must be between 1 and {MAX_LIMIT} (it was {limit}).", "limit"
            )
    after, before = params.get("starting_after"), params.get("ending_before")
    if after is not None and before is not None:
        raise _invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            "ending_before",
        )
    if after is not None:
        start = _cursor(items, after, "starting_after", object_name) + 1
        candidates = [item for item in items[start:] if keep(item)]
        chosen = candidates[:limit]
    elif before is not None:
        end = _cursor(items, before, "ending_before", object_name)
        candidates = [item for item in items[:end] if keep(item)]
        chosen = candidates[-limit:]
    else:
        candidates = [item for item in items if keep(item)]
        chosen = candidates[:limit]
    return {"object": "list", "data": chosen, "has_more": len(candidates) > limit, "url": url}


def _cursor(items: Sequence[dict[str, Any]], cursor: Any, param: str, object_name: str) -> int:
    index = next((i for i, item in enumerate(items) if item["id"] == cursor), None)
    if index is None:
        raise StripeEmulatorError(
            400,
            f"No such {object_name}: '{cursor}'",
            code="resource_missing",
            param=param,
        )
    return index
