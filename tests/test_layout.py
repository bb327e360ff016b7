"""The shape of the code: which module may import which (issue 14), checked by reading imports."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "checkout"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (TYPE_CHECKING and function bodies included)."""
    return imports_in(ast.walk(ast.parse(path.read_text())))


def imports_in(nodes: Iterable[ast.AST]) -> set[str]:
    found: set[str] = set()
    for node in nodes:
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
        "checkout.catalogue",
        "checkout.status_cache",
        "checkout.orders",
        "checkout.recorder",
        "checkout.publisher",
        "checkout.worker",
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


def test_the_order_model_does_no_io():
    # orders.py is the rules alone: the ledger stores, the publisher sends, the worker delivers.
    imported = imports_of(PACKAGE / "orders.py")
    ours = {name.split(".")[1] for name in imported if name.startswith("checkout.")}
    assert ours == {"session"}
    banned = ("stripe", "starlette", "werkzeug", "google", "asyncio", "logging", "socket")
    assert not {name for name in imported if name.startswith(banned)}


@pytest.mark.parametrize(
    "module", ["checkout.recorder", "checkout.webhook", "checkout.routes", "checkout.publisher"]
)
def test_the_request_path_never_imports_the_worker(module):
    # No user code in the webhook or the status request: only the worker runs DELIVER_ORDER.
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith("checkout.worker")}


def test_pubsub_is_imported_only_inside_the_publisher_when_a_topic_is_used():
    # google-cloud-pubsub costs cold start: no module imports it at its top level.
    for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]:
        top_level = imports_in(ast.parse(path.read_text()).body)  # not under TYPE_CHECKING
        assert not {n for n in top_level if "pubsub" in n}, path.relative_to(ROOT)
    everywhere = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any("pubsub" in n for n in imports_of(path))
    }
    assert everywhere == {"publisher.py"}


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


# --- Dependencies passed in, imports pointing one way (main → app → handlers → services) ----


HANDLERS = ("checkout.routes", "checkout.webhook")
SERVICES = (
    "checkout.service",
    "checkout.orders",
    "checkout.recorder",
    "checkout.publisher",
    "checkout.worker",
    "checkout.stripe_gateway",
    "checkout.status_cache",
    "checkout.ledger",
    "checkout.session",
    "checkout.errors",
)


def test_the_service_has_its_own_module():
    from checkout.service import Service

    assert Service.__module__ == "checkout.service"


@pytest.mark.parametrize("module", [*HANDLERS, *SERVICES])
def test_handlers_and_services_never_import_the_app(module):
    imported = imports_of(module_file(module))
    assert "checkout.app" not in imported
    assert not {name for name in imported if name.startswith("main")}


@pytest.mark.parametrize("module", SERVICES)
def test_services_never_import_the_handlers(module):
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith(HANDLERS)}


def test_the_app_keeps_no_service_in_module_globals():
    tree = ast.parse((PACKAGE / "app.py").read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert not {name for name in assigned if "service" in name.lower()}
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Global)]


def test_no_test_patches_attributes_of_our_modules():
    patched = [
        f"{path.name}:{node.lineno}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("setattr", "delattr")
        and getattr(node.func.value, "id", None) == "monkeypatch"
    ]
    assert patched == []


# --- Test helpers in one place ------------------------------------------------------------------


def test_no_test_module_imports_another_test_module_or_conftest():
    offending = [
        f"{path.name}: {name}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for name in imports_of(path)
        if name.startswith(("tests.test_", "tests.conftest", "conftest", "test_"))
    ]
    assert offending == []


def test_one_assert_error():
    defined = [
        path.name
        for path in sorted((ROOT / "tests").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "assert_error"
    ]
    assert defined == ["support.py"]


# --- Types checked --------------------------------------------------------------------------------


def test_make_test_type_checks_the_service_strictly():
    import tomllib

    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m mypy" in recipe
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True
    assert {"main.py", "checkout", "tests", "devtools", "bench"} <= set(mypy["files"])
    lenient = {module for override in mypy["overrides"] for module in override["module"]} & {
        "checkout",
        "checkout.*",
        "main",
    }
    assert not lenient  # no override relaxes the service


def test_every_type_ignore_in_the_service_names_its_code():
    for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore" in line:
                assert "type: ignore[" in line, f"{path.relative_to(ROOT)}:{number}"
