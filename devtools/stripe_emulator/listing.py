"""Stripe's list endpoints: `created` ranges, `limit`, cursors, and the list object they answer.

The parameters arrive checked (params.py, rules.py), so this only reads them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devtools.stripe_emulator.state import StripeEmulatorError

DEFAULT_LIMIT, MAX_LIMIT = 10, 100


def parse_created(value: Any) -> Callable[[int], bool]:
    """A test for a `created` timestamp: `created=T` or `created[gte]=T` and its kin."""
    if value is None:
        return lambda _: True
    if isinstance(value, str):
        exact = int(value)
        return lambda created: created == exact
    bounds = {name: int(bound) for name, bound in value.items()}

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
    limit = int(params.get("limit", DEFAULT_LIMIT))
    after, before = params.get("starting_after"), params.get("ending_before")
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
