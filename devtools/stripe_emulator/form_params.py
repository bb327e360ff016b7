"""Parameter checks for the endpoints beyond sessions (refunds, lists, webhook endpoints).

Stripe's messages and `param` names for a bad integer, boolean, metadata hash or unknown
parameter, as the SDK's InvalidRequestError carries them.
"""

from __future__ import annotations

from typing import Any

from devtools.stripe_emulator.state import _invalid

METADATA_MAX_KEYS, METADATA_MAX_KEY_LENGTH, METADATA_MAX_VALUE_LENGTH = 50, 40, 500


def reject_unknown(values: dict[str, Any], allowed: frozenset[str]) -> None:
    for name in values:
        if name not in allowed:
            raise _invalid(f"Received unknown parameter: {name}", name, code="parameter_unknown")


def parse_int(value: Any, param: str, minimum: int | None = None) -> int:
    text = value if isinstance(value, str) else str(value) if isinstance(value, int) else ""
    digits = text[1:] if text.startswith("-") else text
    if isinstance(value, bool) or not (digits.isascii() and digits.isdigit()):
        raise _invalid(f"Invalid integer: {value}", param)
    number = int(text)
    if minimum is not None and number < minimum:
        raise _invalid(f"This value must be greater than or equal to {minimum}.", param)
    return number


def parse_bool(value: Any, param: str) -> bool | None:
    if value is None:
        return None
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(f"Invalid boolean: {value}", param)


def parse_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """A metadata hash; an empty value unsets its key, an empty string the whole hash."""
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", param)
    if len(value) > METADATA_MAX_KEYS:
        raise _invalid(
            f"Invalid metadata: metadata can have up to {METADATA_MAX_KEYS} keys, "
            f"but you passed in {len(value)} keys.",
            param,
        )
    metadata = {}
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY_LENGTH or "[" in key or "]" in key:
            raise _invalid(
                f"Invalid metadata key '{key}': keys can have up to {METADATA_MAX_KEY_LENGTH} "
                "characters and cannot contain square brackets.",
                param,
            )
        if not isinstance(item, str):
            raise _invalid(f"Invalid value for metadata key '{key}': must be a string.", param)
        if len(item) > METADATA_MAX_VALUE_LENGTH:
            raise _invalid(
                f"Metadata values can have up to {METADATA_MAX_VALUE_LENGTH} characters, but you "
                f"passed in a value that is {len(item)} characters.",
                f"{param}[{key}]",
            )
        if item:
            metadata[key] = item
    return metadata
