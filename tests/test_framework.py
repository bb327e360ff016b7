"""checkout/framework.py: what we change in functions-framework, uvicorn and the process, only when
main.py calls install(), and a start that fails naming the library if an upgrade moved a symbol."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

# Import every module of the service, but not main.py: nothing may change yet.
_IMPORT_ALL = (
    "import os, sys, pkgutil, importlib, logging, checkout\n"
    "import functions_framework.aio as ff, uvicorn_worker\n"
    "env, kwargs = dict(os.environ), dict(uvicorn_worker.UvicornWorker.CONFIG_KWARGS)\n"
    "def logging_state():\n"
    "    return [(l.handlers[:], l.level, l.propagate, l.disabled)\n"
    "            for l in (logging.getLogger(), logging.getLogger('checkout'))]\n"
    "logs = logging_state()\n"
    "builder = ff._create_asgi_app_with_function\n"
    "for info in pkgutil.walk_packages(checkout.__path__, 'checkout.'):\n"
    "    if info.name != 'checkout.__main__':\n"
    "        importlib.import_module(info.name)\n"
    "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
    "assert not [m for m, v in sys.modules.items() if v is None], 'sys.modules changed'\n"
    "assert ff._create_asgi_app_with_function is builder\n"
    "assert uvicorn_worker.UvicornWorker.CONFIG_KWARGS == kwargs\n"
    "assert logging_state() == logs, 'logging configured at import'\n"
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FORWARDED_ALLOW_IPS": "*", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_the_service_changes_no_framework_environment_module_table_or_logging() -> None:
    result = _python(_IMPORT_ALL)
    assert result.returncode == 0, result.stderr


def test_install_makes_every_adjustment_and_a_second_call_changes_nothing() -> None:
    code = (
        "import os, functions_framework.aio as ff, uvicorn_worker\n"
        "from checkout import framework\n"
        "framework.install()\n"
        "builder = ff._create_asgi_app_with_function\n"
        "assert builder.answers_everything\n"
        "kwargs = uvicorn_worker.UvicornWorker.CONFIG_KWARGS\n"
        "assert kwargs['proxy_headers'] is False and kwargs['http'].limits\n"
        "assert os.environ['FORWARDED_ALLOW_IPS'] == ''\n"
        "import logging\n"
        "checkout_log = logging.getLogger('checkout')\n"
        "assert len(checkout_log.handlers) == 1 and not checkout_log.propagate\n"
        "framework.install()\n"
        "assert len(checkout_log.handlers) == 1  # not configured twice\n"
        "assert ff._create_asgi_app_with_function is builder  # not wrapped twice\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_the_pinned_libraries_still_have_every_symbol_install_adjusts() -> None:
    # Fails on an upgrade (requirements.txt) that renames or reshapes one: review framework.py.
    from checkout import framework

    framework.check()


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("del ff._create_asgi_app_with_function", "functions-framework 3."),
        ("ff._create_asgi_app_with_function = lambda app: app", "functions-framework 3."),
        ("del uvicorn_worker.UvicornWorker.CONFIG_KWARGS", "uvicorn-worker 0."),
    ],
)
def test_a_start_after_an_upgrade_that_moved_a_symbol_fails_naming_the_library(
    breakage: str, named: str
) -> None:
    # The upgrade is simulated in a child interpreter; this process's libraries stay untouched.
    code = f"import functions_framework.aio as ff, uvicorn_worker\n{breakage}\nimport main\n"
    result = _python(code, STRIPE_SECRET_KEY="sk_test_frameworkCheck")
    assert result.returncode != 0
    assert "FrameworkChanged" in result.stderr and named in result.stderr, result.stderr
    assert "checkout/framework.py" in result.stderr
