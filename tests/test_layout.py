"""The shape of the code: which module may import which (issue 14), checked by reading imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "checkout"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (TYPE_CHECKING and function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def module_file(name: str) -> Path:
    path = ROOT / Path(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_session_rules_import_no_stripe_http_or_google():
    banned = ("stripe", "starlette", "werkzeug", "google", "checkout.")
    imported = imports_of(PACKAGE / "session.py")
    assert not {name for name in imported if name.startswith(banned)}


@pytest.mark.parametrize(
    "module",
    [
        "checkout.status_cache",
        "checkout.fulfilment",
        "checkout.webhook",
        "checkout.ledger",
        "checkout.ledger.memory",
        "checkout.ledger.firestore",
    ],
)
def test_session_users_depend_on_the_session_module_not_the_gateway(module):
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith("checkout.stripe_gateway")}
    assert not {name for name in imported if name.startswith("checkout.stripe_transport")}


def test_only_the_errors_module_builds_api_errors():
    builders = []
    for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]:
        if path == PACKAGE / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "ApiError":
                builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert builders == []


def test_every_error_code_has_one_constructor():
    from checkout import errors

    constructors = {
        name
        for name, value in vars(errors).items()
        if callable(value) and not name.startswith("_") and name.islower()
    }
    assert set(errors.CODES) <= constructors
