"""The shape of the code: which module may import which (issue 14), checked by reading imports."""

from __future__ import annotations

import ast
import string
from collections.abc import Callable, Iterable, Iterator
from functools import partial
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
    imported = imports_of(PACKAGE / "orders" / "session.py")
    assert not {name for name in imported if name.startswith(banned)}


@pytest.mark.parametrize(
    "module",
    [
        "checkout.orders.catalogue",
        "checkout.api.status_cache",
        "checkout.orders.model",
        "checkout.orders.recorder",
        "checkout.orders.publisher",
        "checkout.orders.delivery",
        "checkout.api.webhook",
        "checkout.orders.ledger",
        "checkout.orders.ledger.memory",
        "checkout.orders.ledger.firestore",
    ],
)
def test_session_users_depend_on_the_session_module_not_the_gateway(module):
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith("checkout.stripe_access.gateway")}
    assert not {name for name in imported if name.startswith("checkout.stripe_access.transport")}


def test_the_order_model_does_no_io():
    # The rules alone, on typed values: the ledger stores, the publisher sends, the worker
    # delivers, and the intake (stripe_fields) reads Stripe's JSON into facts.
    imported = imports_of(PACKAGE / "orders" / "model.py")
    ours = {".".join(name.split(".")[:3]) for name in imported if name.startswith("checkout.")}
    assert ours <= {"checkout.orders.session", "checkout.errors", "checkout.errors.CheckoutError"}
    banned = ("stripe", "starlette", "werkzeug", "google", "asyncio", "logging", "socket")
    assert not {name for name in imported if name.startswith(banned)}


# What the orders package never imports, and why (docs/layout.md).
ORDERS_NEVER_IMPORT = {
    "checkout.api": "the HTTP layer calls the orders, never the other way round",
    "checkout.stripe_access": "the orders reach Stripe through orders/intake.py's StripeReads",
    # The runtime holds every part, HTTP ones too: the orders are handed their collaborators.
    "checkout.runtime": "the orders get only their collaborators, never the bag of every part",
}


def banned_imports(source: str, banned: Iterable[str]) -> list[str]:
    """What `source` imports (at any depth, TYPE_CHECKING too) from the `banned` packages."""
    imported = imports_in(ast.walk(ast.parse(source)))
    prefixes = tuple(banned)
    return sorted(
        n for n in imported if n in prefixes or n.startswith(tuple(f"{p}." for p in prefixes))
    )


@pytest.mark.parametrize("banned", list(ORDERS_NEVER_IMPORT))
def test_the_orders_never_import_the_http_layer_the_stripe_gateway_or_the_runtime(banned):
    offending = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((PACKAGE / "orders").rglob("*.py"))
        for name in banned_imports(path.read_text(), [banned])
    ]
    assert offending == [], ORDERS_NEVER_IMPORT[banned]


@pytest.mark.parametrize(
    ("source", "banned"),
    [
        ("from checkout.api.status_cache import StatusCache", "checkout.api"),
        ("import checkout.api.http", "checkout.api"),
        ("from checkout import api", "checkout.api"),
        ("def forget():\n    from checkout.api import status_cache", "checkout.api"),
        ("from checkout.stripe_access.gateway import StripeGateway", "checkout.stripe_access"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from checkout.runtime import Service",
            "checkout.runtime",
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from checkout.stripe_access import transport",
            "checkout.stripe_access",
        ),
    ],
)
def test_the_orders_import_guard_catches(source, banned):
    assert banned_imports(source, [banned]), source


def test_the_orders_import_guard_lets_the_orders_own_imports_through():
    source = """
from checkout.orders.session import SessionStatus
from checkout.config import Settings
import checkout.apis_of_someone_else
"""
    assert banned_imports(source, ORDERS_NEVER_IMPORT) == []


@pytest.mark.parametrize(
    "module",
    [
        "checkout.orders.recorder",
        "checkout.api.webhook",
        "checkout.api.routes",
        "checkout.orders.publisher",
    ],
)
def test_the_request_path_never_imports_the_worker(module):
    # No user code in the webhook or the status request: only the worker runs DELIVER_ORDER.
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith("checkout.orders.delivery")}


def test_pubsub_is_imported_only_inside_the_publisher_when_a_topic_is_used():
    # google-cloud-pubsub costs cold start: no module imports it at its top level. The
    # subscriptions audit (operator commands only) reads the topic's subscriptions with it.
    for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]:
        top_level = imports_in(ast.parse(path.read_text()).body)  # not under TYPE_CHECKING
        assert not {n for n in top_level if "pubsub" in n}, path.relative_to(ROOT)
    everywhere = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if any("pubsub" in n for n in imports_of(path))
    }
    assert everywhere == {"orders/publisher.py", "ops/subscriptions.py"}
    for module in (
        "checkout.orders.recorder",
        "checkout.api.webhook",
        "checkout.api.routes",
        "checkout.api.app",
        "checkout.api.fulfil",
    ):
        assert "checkout.ops.subscriptions" not in imports_of(module_file(module))


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


def api_error_calls(source: str) -> list[tuple[int, str | None, set[str]]]:
    """Each api_error(...) call in `source`: its line, its code (None: not a literal) and the
    sentence fields it fills."""
    calls = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _called(node) == "api_error":
            first = node.args[0] if node.args else None
            literal = first.value if isinstance(first, ast.Constant) else None
            code = literal if isinstance(literal, str) else None
            fields = {k.arg or "**" for k in node.keywords} - {"detail", "headers"}
            calls.append((node.lineno, code, fields))
    return calls


def error_code_problems(source: str, sentences: dict[str, str]) -> list[str]:
    """Each api_error(...) call in `source` that names no code of the table by a literal, or does
    not fill exactly the `{fields}` of that code's sentence."""
    problems = []
    for line, code, given in api_error_calls(source):
        if code is None or code not in sentences:
            problems.append(f"{line}: {code!r} is not a code of the table")
            continue
        wanted = {name for _, name, _, _ in string.Formatter().parse(sentences[code]) if name}
        if given != wanted:
            problems.append(f"{line}: {code} fills {sorted(given)}, not {sorted(wanted)}")
    return problems


def _called(node: ast.Call) -> str | None:
    return getattr(node.func, "id", None) or getattr(node.func, "attr", None)


def duplicate_codes(table: str) -> list[str]:
    from checkout.errors import rows_of

    codes = [row.code for row in rows_of(table)]
    return sorted({code for code in codes if codes.count(code) > 1})


def test_every_error_code_is_one_row_answered_by_name_with_its_sentences_fields():
    from checkout.api.errors import ANSWERS
    from checkout.errors import CODES, TABLE

    assert duplicate_codes(TABLE) == []
    sentences = {code: row.message for code, row in CODES.items()}
    problems, used = [], set(ANSWERS.values())
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "api" / "errors.py":
            continue  # the one table of our exceptions' codes, checked below
        source = path.read_text()
        problems += [
            f"{path.relative_to(ROOT)}:{p}" for p in error_code_problems(source, sentences)
        ]
        used |= {code for _, code, _ in api_error_calls(source) if code is not None}
    assert problems == []
    # Our exceptions' table names codes of the table whose sentences take no field.
    assert {code: sentences[code].count("{") for code in ANSWERS.values()} == dict.fromkeys(
        ANSWERS.values(), 0
    )
    assert used == set(CODES)  # and no code is left that nothing answers


@pytest.mark.parametrize(
    "source",
    [
        'raise api_error("no_such_code")',
        "raise api_error(code)",  # not named: nothing can check it
        'raise api_error("invalid_image_id")',  # its sentence's {rule} left unfilled
        'raise api_error("not_found", what="x")',  # a field its sentence does not have
        'raise errors.api_error("invalid_body", detail="d", problem="p", limit=3)',
    ],
)
def test_the_error_code_guard_catches(source):
    from checkout.errors import CODES

    assert error_code_problems(source, {c: row.message for c, row in CODES.items()}), source


def test_the_error_code_guard_catches_a_duplicate_row():
    from checkout.errors import TABLE

    assert duplicate_codes(TABLE + "not_found 404 - Again.\n") == ["not_found"]


def api_error_uses(source: str) -> list[str]:
    """Each place `source` names ApiError or api_error: without them it can raise no ApiError."""
    names = ("ApiError", "api_error")
    return [
        f"{getattr(node, 'lineno', 0)}: {ast.unparse(node)[:80]}"
        for node in ast.walk(ast.parse(source))
        if (isinstance(node, ast.Name) and node.id in names)
        or (isinstance(node, ast.Attribute) and node.attr in names)
        or (isinstance(node, ast.alias) and node.name in names)
    ]


def test_no_module_outside_the_http_api_raises_an_api_error():
    # Below the HTTP layer our exceptions are raised and caught by class (checkout/errors.py);
    # checkout/api/errors.py turns them into answers.
    every = [*PACKAGE.rglob("*.py"), ROOT / "main.py"]
    below = [path for path in every if PACKAGE / "api" not in path.parents]
    uses = {str(path.relative_to(ROOT)): api_error_uses(path.read_text()) for path in below}
    assert uses.pop("checkout/errors.py")  # where both are defined: the guard sees them
    assert {path: found for path, found in uses.items() if found} == {}


@pytest.mark.parametrize(
    "source",
    [
        'from checkout.errors import api_error\nraise api_error("not_found")',
        'from checkout import errors\nraise errors.api_error("session_not_found", "d")',
        "from checkout.errors import ApiError\ntry:\n    pass\nexcept ApiError:\n    raise",
        "import checkout.errors\nraise checkout.errors.ApiError(404, 'x', 'y', {}, None)",
    ],
)
def test_the_api_error_guard_catches(source):
    assert api_error_uses(source), source


def stray_exceptions(classes: Iterable[type]) -> list[str]:
    from checkout.errors import CheckoutError

    return [
        f"{kind.__module__}.{kind.__qualname__}"
        for kind in classes
        if issubclass(kind, BaseException) and not issubclass(kind, CheckoutError)
    ]


def test_every_exception_of_ours_descends_from_the_one_root():
    import importlib
    import pkgutil

    import checkout

    defined = []
    for module in pkgutil.walk_packages(checkout.__path__, "checkout."):
        found = importlib.import_module(module.name)
        defined += [
            kind
            for kind in vars(found).values()
            if isinstance(kind, type) and kind.__module__ == module.name
        ]
    assert len([kind for kind in defined if issubclass(kind, BaseException)]) > 20
    assert stray_exceptions(defined) == []


def test_the_exception_root_guard_catches():
    class Stray(ValueError):
        pass

    assert stray_exceptions([Stray, int]) == [f"{__name__}.{Stray.__qualname__}"]


# Secret Manager's calls that look at or change a secret itself, not read one of its values.
SECRET_ADMIN_CALLS = {
    "add_secret_version",
    "create_secret",
    "delete_secret",
    "update_secret",
    "get_secret",
    "destroy_secret_version",
    "disable_secret_version",
    "enable_secret_version",
    "set_iam_policy",
}


def secret_admin_calls_in(source: str) -> list[str]:
    return [
        f"{node.lineno}: {ast.unparse(node.func)}()"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in SECRET_ADMIN_CALLS
    ]


def test_only_the_operator_commands_administer_secrets():
    # The service reads secret values (checkout/keys.py); writing them is an operator's command.
    found = {
        path.relative_to(ROOT).as_posix(): secret_admin_calls_in(path.read_text())
        for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]
    }
    writers = {path for path, calls in found.items() if calls}
    assert writers and all(path.startswith("checkout/ops/") for path in writers), writers
    assert not secret_admin_calls_in("client.access_secret_version(request={})")


# --- Dependencies passed in, imports pointing one way (main → app → handlers → services) ----


HANDLERS = ("checkout.api.routes", "checkout.api.webhook", "checkout.api.parts")
# What the handlers are built from: the runtime's parts, and what those are made of.
PARTS = (
    "checkout.runtime",
    "checkout.orders.model",
    "checkout.orders.recorder",
    "checkout.orders.publisher",
    "checkout.orders.delivery",
    "checkout.stripe_access.gateway",
    "checkout.api.status_cache",
    "checkout.orders.ledger",
    "checkout.orders.session",
    "checkout.errors",
)


def test_the_runtime_has_its_own_module():
    from checkout.runtime import Runtime

    assert Runtime.__module__ == "checkout.runtime"


def test_the_push_handler_and_the_start_checks_have_modules_of_their_own():
    # api/app.py dispatches HTTP requests; Pub/Sub's pushes and the checks before a start are
    # other concerns, each in its own room.
    from checkout.api.fulfil import FulfilApi
    from checkout.startup import check_api_can_start, exit_if_misconfigured

    assert FulfilApi.__module__ == "checkout.api.fulfil"
    assert exit_if_misconfigured.__module__ == check_api_can_start.__module__ == "checkout.startup"
    app = {
        node.name
        for node in ast.parse((PACKAGE / "api" / "app.py").read_text()).body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef))
    }
    assert not app & {"FulfilApi", "_attributes_of", "exit_if_misconfigured", "check_api_can_start"}


def test_the_ledgers_outage_log_lives_beside_the_ledger():
    from checkout.orders.ledger.outages import OutageLog

    assert OutageLog.__module__.startswith("checkout.orders.ledger")
    assert "OutageLog" not in (PACKAGE / "logs.py").read_text()


@pytest.mark.parametrize("module", [*HANDLERS, *PARTS])
def test_handlers_and_parts_never_import_the_app(module):
    imported = imports_of(module_file(module))
    assert "checkout.api.app" not in imported
    assert not {name for name in imported if name.startswith("main")}


@pytest.mark.parametrize("module", PARTS)
def test_parts_never_import_the_handlers(module):
    imported = imports_of(module_file(module))
    assert not {name for name in imported if name.startswith(HANDLERS)}


def http_imports(source: str, module: str) -> list[str]:
    """Every import of the HTTP layer (checkout.api) in `source`, the text of module `module`:
    at any depth (TYPE_CHECKING and function bodies included), relative imports resolved."""
    package = module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            names = [stem, *(f"{stem}.{alias.name}" for alias in node.names)]
        else:
            continue
        if any(name == "checkout.api" or name.startswith("checkout.api.") for name in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def below_the_http_layer() -> list[Path]:
    return [PACKAGE / "runtime.py", *sorted((PACKAGE / "orders").rglob("*.py"))]


def test_the_runtime_and_the_orders_never_import_the_http_layer():
    # The runtime builds the parts every process shares (the worker, the commands); the HTTP
    # layer builds its own from them (checkout/api/parts.py), never the other way round.
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in below_the_http_layer()
        for line in http_imports(path.read_text(), _module_of(path))
    ]
    assert found == []
    assert len(below_the_http_layer()) > 10  # the guard reads the files it means to


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from checkout.api.http import CorsPolicy", "checkout.runtime"),
        ("import checkout.api.status_cache", "checkout.runtime"),
        ("from checkout import api", "checkout.orders.intake"),
        ("from checkout.api import routes", "checkout.orders.intake"),
        ("if TYPE_CHECKING:\n    from checkout.api.limits import TokenBuckets", "checkout.runtime"),
        ("def f():\n    from checkout.api.webhook import MAX_EVENT_BYTES", "checkout.orders.model"),
        ("from ..api.status_cache import StatusCache", "checkout.orders.intake"),
        ("from .api import http", "checkout.runtime"),
        ("from ...api import app", "checkout.orders.ledger.memory"),
    ],
)
def test_the_http_layer_guard_catches(source, module):
    assert http_imports(source, module), source


def test_the_http_layer_guard_lets_the_rest_through():
    source = (
        "from checkout.orders.ledger import Ledger\n"
        "from checkout import config\n"
        "from . import model\n"
        "import checkout.apis_elsewhere\n"
        "from ..ops import doctor\n"
    )
    assert http_imports(source, "checkout.orders.intake") == []


def runtime_takers(source: str, bags: set[str]) -> list[str]:
    """Every function parameter, and every class field, in `source` typed as one of `bags`
    (a `from_runtime` builder's excepted): "LINE: name"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name == "from_runtime":
                continue
            arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            typed = [a.annotation for a in arguments if a.annotation is not None]
        elif isinstance(node, ast.ClassDef):
            typed = [item.annotation for item in node.body if isinstance(item, ast.AnnAssign)]
        else:
            continue
        if any(_names(annotation) & bags for annotation in typed):
            found.append(f"{node.lineno}: {node.name}")
    return found


def the_bags() -> set[str]:
    """The classes of checkout/runtime.py that build every shared part from the settings."""
    tree = ast.parse((PACKAGE / "runtime.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(item, ast.FunctionDef) and item.name == "from_settings" for item in node.body
        )
    }


# Where a process's work starts: the commands' loop and the commands themselves.
RUNS_COMMANDS = {"checkout/__main__.py", "checkout/ops/command.py", "checkout/ops/setup.py"}


def test_the_runtime_is_handed_only_to_what_builds_from_it():
    # No bag of every part passed around: a handler, the worker, the reconciler and doctor get
    # their own collaborators. Only the builders and the commands take the one runtime.
    bags = the_bags()
    assert bags == {"Runtime"}
    takers = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]
        for line in runtime_takers(path.read_text(), bags)
    }
    assert {taker.split(":")[0] for taker in takers} <= RUNS_COMMANDS, sorted(takers)


@pytest.mark.parametrize(
    "source",
    [
        "async def handle(request: Request, runtime: Runtime) -> Response: ...",
        "def reconcile(runtime: 'Runtime', days: int) -> None: ...",
        "def doctor(*, parts: Runtime | None = None) -> None: ...",
        "def later(work: Callable[[Runtime], Awaitable[int]]) -> int: ...",
        "@dataclass\nclass Handler:\n    runtime: Runtime",
        "class Worker:\n    runtime: 'Runtime | None' = None",
    ],
)
def test_the_runtime_guard_catches(source):
    assert runtime_takers(source, {"Runtime"}), source


def test_the_runtime_guard_lets_builders_and_parts_through():
    source = (
        "class Parts:\n    ledger: Ledger\n"
        "    @classmethod\n    def from_runtime(cls, runtime: Runtime) -> Parts: ...\n"
        "def handle(request: Request, parts: Parts) -> None: ...\n"
        "def other(runtime_name: str) -> Runtime: ...\n"
    )
    assert runtime_takers(source, {"Runtime"}) == []


def _names(annotation: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)} | {
        part
        for n in ast.walk(annotation)
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
        for part in n.value.replace("[", " ").replace("]", " ").replace("|", " ").split()
    }


def test_the_app_keeps_no_runtime_in_module_globals():
    tree = ast.parse((PACKAGE / "api" / "app.py").read_text())
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    kept = ("service", "runtime", "parts", "handlers")
    assert not {name for name in assigned if any(word in name.lower() for word in kept)}
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Global)]


# Packages whose attributes a test must never replace: ours, and the SDK the tests run for real.
UNPATCHABLE = ("checkout", "main", "devtools", "stripe")
MOCK_MODULES = ("unittest.mock", "mock", "pytest_mock")


def patches_in(source: str) -> list[str]:
    """Every place `source` patches code instead of running it: "LINE: what".

    Caught: importing a mock library; calling a `patch` (mock.patch, patch.object, mocker.patch);
    monkeypatch.setattr/delattr (on anything: tests configure through the environment); setattr
    or delattr on, and assignment to an attribute of, a name imported from UNPATCHABLE
    (`stripe.api_key = ...`, `checkout.keys.X = ...`, `StatusCache.get = ...`).
    """
    tree = ast.parse(source)
    imported: set[str] = set()  # names bound to something of ours or stripe's
    mocks = {"mock", "mocker", "patch"}  # names bound to a mock library (mocker: pytest-mock)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_mock(alias.name):
                    found.append(f"{node.lineno}: import {alias.name}")
                    mocks.add(alias.asname or alias.name.split(".")[0])
                if _ours(alias.name):
                    imported.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if _is_mock(node.module) or _is_mock(f"{node.module}.{alias.name}"):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                    mocks.add(alias.asname or alias.name)
            if _ours(node.module):
                imported |= {alias.asname or alias.name for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = getattr(func, "attr", None) or getattr(func, "id", None)
            receiver = _root(func.value) if isinstance(func, ast.Attribute) else None
            # mock.patch(...), patch(...), patch.object(...), mocker.patch(...); not client.patch
            if _root(func) in mocks and "patch" in ast.unparse(func):
                found.append(f"{node.lineno}: {ast.unparse(func)}()")
            elif name in ("setattr", "delattr") and receiver == "monkeypatch":
                found.append(f"{node.lineno}: monkeypatch.{name}")
            elif (
                name in ("setattr", "delattr")
                and isinstance(func, ast.Name)
                and node.args
                and _root(node.args[0]) in imported
            ):
                found.append(f"{node.lineno}: {name}({_root(node.args[0])}, ...)")
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            if isinstance(target, ast.Attribute) and _root(target) in imported:
                found.append(f"{target.lineno}: {ast.unparse(target)} assigned")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def _is_mock(module: str) -> bool:
    return module in MOCK_MODULES or module.startswith(tuple(f"{m}." for m in MOCK_MODULES))


def _ours(module: str) -> bool:
    return module.split(".")[0] in UNPATCHABLE


def _root(node: ast.expr) -> str | None:
    """The name an attribute chain starts from: `stripe` for stripe.a.b, None for f().a."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_test_patches_our_code_or_the_sdk():
    patched = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if "node_modules" not in path.parts
        for line in patches_in(path.read_text())
    ]
    assert patched == []


@pytest.mark.parametrize(
    "source",
    [
        "from unittest import mock",
        "import unittest.mock",
        "from unittest.mock import patch",
        "import mock",
        "def test():\n    with mock.patch.dict('os.environ', {}):\n        pass",
        "@mock.patch('stripe.checkout.Session.create')\ndef test():\n    pass",
        "def test():\n    with patch.object(Service, 'create'):\n        pass",
        "def test(mocker):\n    mocker.patch('checkout.api.http.allowed')",
        "def test(monkeypatch):\n    monkeypatch.setattr(stripe, 'api_key', 'sk_test_x')",
        "def test(monkeypatch):\n    monkeypatch.setattr('checkout.keys._RETRY_BUDGET_S', 0)",
        "def test(monkeypatch):\n    monkeypatch.delattr(keys, 'x')",
        "import stripe\nstripe.api_key = 'sk_test_x'",
        "import stripe\nstripe.checkout.Session.create = fake",
        "import checkout.keys\ncheckout.keys._RETRY_BUDGET_S = 0",
        "from checkout import keys as k\nk._ATTEMPT_TIMEOUT_S += 1",
        "from checkout.api.status_cache import StatusCache\nStatusCache.get = lambda *a: None",
        "import main\ndel main.checkout_api",
        "import stripe\nsetattr(stripe, 'max_network_retries', 0)",
        "from checkout import config\nconfig.REQUEST_MARGIN_SECONDS: float = 0",
    ],
)
def test_the_patching_guard_catches(source):
    assert patches_in(source), source


def test_the_patching_guard_lets_ordinary_code_through():
    source = """
import threading
from checkout.api.status_cache import StatusCache

def test(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("CI")
    cache = StatusCache(max_size=1)
    cache.note = "an attribute of an instance the test made"
    event = threading.Event()
    event.flag = True
    setattr(cache, "other", 1)
    client.patch("/api/checkout/embedded-session")  # an HTTP PATCH, not a mock
"""
    assert patches_in(source) == []


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


# --- The dev tools: no import circles -----------------------------------------------------------


def circles(package: Path, root: Path = ROOT) -> list[list[str]]:
    """Groups of `package`'s modules that import each other, directly or round a circle.

    An import of a module's own package (its __init__) is not counted: it runs first anyway.
    """
    names = {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    graph = {
        name: {
            other
            for other in imports_of(path)
            if other in names and other != name and not name.startswith(other + ".")
        }
        for name, path in names.items()
    }

    def reaches(start: str, goal: str) -> bool:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for other in graph[todo.pop()] - seen:
                if other == goal:
                    return True
                seen.add(other)
                todo.append(other)
        return False

    groups = {
        tuple(
            sorted(
                {name, *(other for other in names if reaches(name, other) and reaches(other, name))}
            )
        )
        for name in names
        if reaches(name, name)
    }
    return sorted(list(group) for group in groups)


def test_the_dev_tools_import_in_no_circle():
    # TYPE_CHECKING imports count: a module names what it needs of another as a Protocol instead.
    assert circles(ROOT / "devtools") == []


def test_the_circle_guard_catches(tmp_path):
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circle.b import B\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import circle.a\n"
    )
    (package / "c.py").write_text("import circle.a\n")  # imports a circle's module: not in it
    assert circles(package, tmp_path) == [["circle.a", "circle.b"]]


# --- Nothing surprising at import ---------------------------------------------------------------


def written(node: ast.AST) -> list[ast.expr]:
    """What `node` assigns, augments or deletes."""
    if isinstance(node, (ast.Assign, ast.Delete)):
        return node.targets
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    return []


def changes_to_the_process(source: str) -> list[str]:
    """Each place `source` writes os.environ or sys.modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = written(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("putenv", "unsetenv"):
                targets = [node.func]
            elif node.func.attr in ("update", "setdefault", "pop", "popitem", "clear"):
                targets = [node.func.value]
        for target in targets:
            text = ast.unparse(target)
            if text.startswith(("os.environ", "sys.modules", "os.putenv", "os.unsetenv")):
                found.append(f"{getattr(node, 'lineno', 0)}: {text}")
    return found


def places_in_the_service(
    find: Callable[[str], list[str]], *, but: Path | None = None
) -> list[str]:
    """Each "FILE:LINE: what" that `find` reports in checkout/ and main.py (but one file)."""
    return [
        f"{path.relative_to(ROOT)}:{place}"
        for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]
        if path != but
        for place in find(path.read_text())
    ]


def test_only_the_framework_module_changes_the_environment_or_the_module_table():
    # Its changes run in one explicit call, framework.install(), which main.py makes first.
    assert places_in_the_service(changes_to_the_process, but=PACKAGE / "framework.py") == []
    assert changes_to_the_process((PACKAGE / "framework.py").read_text())  # the guard sees them


@pytest.mark.parametrize(
    "source",
    [
        "import os\nos.environ['X'] = ''",
        "import os\nos.environ.setdefault('X', '')",
        "import os\ndel os.environ['X']",
        "import sys\nsys.modules['requests'] = None",
        "import os\nos.putenv('X', '')",
    ],
)
def test_the_process_change_guard_catches(source):
    assert changes_to_the_process(source)


# What configures logging: handlers, levels, propagation, and our one call that sets them.
LOGGING_SETUP = {
    "addHandler",
    "removeHandler",
    "setLevel",
    "basicConfig",
    "dictConfig",
    "fileConfig",
    "disable",
    "captureWarnings",
    "setLoggerClass",
    "setup_logging",
}


def _run_at_import(tree: ast.Module) -> Iterator[ast.AST]:
    """The nodes of `tree` that run when the module is imported: not those inside a function."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)


def logging_configured_in(source: str, *, at_import: bool = False) -> list[str]:
    """Each place `source` configures logging ("LINE: what"); `at_import`: only those that run
    when it is imported, outside any function."""
    tree = ast.parse(source)
    found = []
    for node in _run_at_import(tree) if at_import else ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in LOGGING_SETUP:
                found.append(f"{node.lineno}: {ast.unparse(node.func)}()")
        for target in written(node):
            if isinstance(target, ast.Attribute) and target.attr in ("propagate", "disabled"):
                found.append(f"{target.lineno}: {ast.unparse(target)} assigned")
    return found


def test_logging_is_configured_only_by_setup_logging_and_only_when_called():
    # logs.setup_logging() does it; framework.install() (main.py's one call) and the operator
    # commands' entry point call it. Importing a module configures nothing.
    assert places_in_the_service(partial(logging_configured_in, at_import=True)) == []
    configuring = {
        path.relative_to(ROOT).as_posix()
        for path in [*PACKAGE.rglob("*.py"), ROOT / "main.py"]
        if logging_configured_in(path.read_text())
    }
    assert configuring == {"checkout/logs.py", "checkout/framework.py", "checkout/__main__.py"}
    source = (PACKAGE / "logs.py").read_text()
    setup = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "setup_logging"
    )
    lines = [int(place.split(":")[0]) for place in logging_configured_in(source)]
    assert lines and all(setup.lineno <= line <= (setup.end_lineno or 0) for line in lines)
    for name in ("framework.py", "__main__.py"):
        calls = logging_configured_in((PACKAGE / name).read_text())
        assert calls and all(call.endswith("setup_logging()") for call in calls), name


@pytest.mark.parametrize(
    "source",
    [
        "from checkout.logs import setup_logging\nsetup_logging()",
        "from checkout import logs\nlogs.setup_logging()",
        "import logging\nlogging.basicConfig(level=logging.INFO)",
        "import logging\nlogging.getLogger('checkout').addHandler(logging.StreamHandler())",
        "import logging\nlogging.getLogger('checkout').setLevel(logging.DEBUG)",
        "import logging\nlog = logging.getLogger('checkout')\nlog.propagate = False",
        "import logging.config\nlogging.config.dictConfig({'version': 1})",
        "import logging\nclass Quiet:\n    logging.disable(logging.INFO)",
    ],
)
def test_the_logging_guard_catches_configuration_at_import(source):
    assert logging_configured_in(source, at_import=True), source


def test_the_logging_guard_tells_a_call_at_import_from_one_inside_a_function():
    source = "from checkout.logs import setup_logging\ndef main():\n    setup_logging()\n"
    assert logging_configured_in(source, at_import=True) == []
    assert logging_configured_in(source) == ["3: setup_logging()"]


def test_main_makes_the_one_framework_call_before_importing_the_service():
    tree = ast.parse((ROOT / "main.py").read_text())
    calls = [ast.unparse(node) for node in tree.body if isinstance(node, ast.Expr)]
    assert calls[1:2] == ["framework.install()"]  # after the docstring
    service_imports = [
        n.lineno
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("checkout.")
    ]
    install = next(n.lineno for n in tree.body if ast.unparse(n) == "framework.install()")
    assert service_imports and min(service_imports) > install


# --- The prose budget: a module docstring says what the module is; docs/ says why --------------


def docstring_lines(source: str) -> int:
    """How many lines the module docstring of `source` spans (0: it has none)."""
    body = ast.parse(source).body
    first = body[0] if body else None
    if not (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return 0
    return (first.end_lineno or first.lineno) - first.lineno + 1


def test_every_module_docstring_is_three_lines_at_most():
    too_long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "devtools").rglob("*.py")])
        if (lines := docstring_lines(path.read_text())) > 3
    ]
    assert too_long == [], "move the why to docs/ and point there"


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ('"""One line."""\nimport os\n', 1),
        ('"""Summary.\n\nWhy, pointing to docs/x.md."""\n', 3),
        ('"""Summary.\n\nWhy,\nat length.\n"""\n', 5),
        ("# a comment, then no docstring\nimport os\n", 0),
        ("", 0),
    ],
)
def test_the_docstring_guard_counts_the_lines(source, lines):
    assert docstring_lines(source) == lines
