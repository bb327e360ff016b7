"""cloudbuild.yaml, proved offline: schema, step order, entry point, gcloud flags, substitutions.

Cloud Build cannot run here, so the deploy step's script is run the way Cloud Build would run it
(substitutions applied, `$$` unescaped, bash as the entry point) with a recording `gcloud` on
PATH. The real gcloud then parses every recorded call (marker `gcloud`), and the other tests check
what no tool can: that each substitution reaches the right flag or variable.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkout.config import load_settings
from checkout.ops.doctor import WORKER_REQUEST_TIMEOUT_S
from tests.gcloud_cli import Call, Recorder, require_gcloud, run_for_real
from tests.support import ROOT

CLOUDBUILD = ROOT / "cloudbuild.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
PROJECT = "demo-project"
FRONTEND_URL = "https://app.example.com"
KEY_SOURCES = ("set-secrets", "secret-manager")

# Cloud Build's built-in substitutions
# (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
BUILTINS = {
    "PROJECT_ID": PROJECT,
    "PROJECT_NUMBER": "123456789012",
    "BUILD_ID": "00000000-0000-0000-0000-000000000000",
    "LOCATION": "global",
    "COMMIT_SHA": "0" * 40,
    "SHORT_SHA": "0000000",
    "REVISION_ID": "0" * 40,
    "BRANCH_NAME": "main",
    "TAG_NAME": "",
    "REPO_NAME": "checkout",
    "REF_NAME": "main",
    "TRIGGER_NAME": "",
    "SERVICE_ACCOUNT_EMAIL": "",
}

# `$$`, `${NAME}` or `$NAME`, as Cloud Build reads them.
_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    return yaml.safe_load(CLOUDBUILD.read_text())


def step(build: dict[str, Any], step_id: str) -> dict[str, Any]:
    (found,) = [s for s in build["steps"] if s.get("id") == step_id]
    return found


def step_strings(s: dict[str, Any]) -> list[str]:
    """The fields of a step that Cloud Build substitutes into."""
    return [
        s["name"],
        s.get("entrypoint", ""),
        s.get("dir", ""),
        *s.get("args", []),
        *s.get("env", []),
    ]


def referenced_names(build: dict[str, Any]) -> set[str]:
    return {
        m.group(1) or m.group(2)
        for s in build["steps"]
        for text in step_strings(s)
        for m in _REFERENCE.finditer(text)
        if m.group(0) != "$$"
    }


def substitute(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        assert name in values, f"Cloud Build would reject ${name}: no such substitution"
        return values[name]

    return _REFERENCE.sub(replace, text)


class DeployRun:
    """The deploy step run like Cloud Build runs it, with `gcloud` recorded instead of executed."""

    def __init__(self, build: dict[str, Any], tmp_path: Path, **overrides: str) -> None:
        substitutions = {k: str(v) for k, v in build["substitutions"].items()}
        unknown = set(overrides) - set(substitutions)
        assert not unknown, f"not substitutions of cloudbuild.yaml: {unknown}"
        values = {**BUILTINS, **substitutions, "_FRONTEND_URL": FRONTEND_URL, **overrides}

        deploy = step(build, "deploy")
        self.recorder = Recorder(tmp_path, shutil.which("gcloud") or "gcloud")
        workspace = tmp_path / "workspace"
        workspace.mkdir()

        command = [substitute(deploy.get("entrypoint", ""), values)]
        command += [substitute(arg, values) for arg in deploy.get("args", [])]
        env = self.recorder.env(path=os.environ["PATH"])
        # Cloud Build's gcloud takes the build's project from the metadata server.
        env["CLOUDSDK_CORE_PROJECT"] = values["PROJECT_ID"]
        env.update(entry.split("=", 1) for entry in deploy.get("env", []))
        self.result = subprocess.run(
            [c for c in command if c],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        self.recorded = self.recorder.calls()
        self.calls = [call.argv for call in self.recorded]

    def deploys(self) -> dict[str, tuple[str, dict[str, str | None]]]:
        """{function: (service, flags)}: the step deploys the worker, then the API, then the
        reconciler job (job_deploy), nothing else."""
        assert self.result.returncode == 0, self.result.stderr
        assert [argv[:2] for argv in self.calls] == [["run", "deploy"]] * 2 + [["run", "jobs"]]
        parsed = [parse_run_deploy(argv) for argv in self.calls[:2]]
        functions = [str(flags["--function"]) for _, flags in parsed]
        assert functions == ["fulfil_order", "checkout_api"], self.calls
        return dict(zip(functions, parsed, strict=True))

    def job_deploy(self) -> tuple[str, dict[str, str | None]]:
        """(job, flags) of the reconciler's `gcloud run jobs deploy`, the step's last call."""
        self.deploys()
        return parse_run_deploy(self.calls[-1], ["run", "jobs", "deploy"])

    def api_deploy(self) -> tuple[str, dict[str, str | None]]:
        return self.deploys()["checkout_api"]

    def worker_deploy(self) -> tuple[str, dict[str, str | None]]:
        return self.deploys()["fulfil_order"]


def parse_run_deploy(
    argv: list[str], command: list[str] | None = None
) -> tuple[str, dict[str, str | None]]:
    """(service, {flag: value or None}) of a `gcloud run deploy` (or `command`) command line.

    Which flags exist, and which take a value, is the real gcloud's to say
    (test_the_deploy_step_passes_the_real_gcloud); here a flag takes the next token unless that
    is a flag too.
    """
    command = command or ["run", "deploy"]
    assert argv[: len(command)] == command, argv
    service, rest = argv[len(command)], argv[len(command) + 1 :]
    assert not service.startswith("-"), "the service name comes first"
    flags: dict[str, str | None] = {}
    for i, token in enumerate(rest):
        if not token.startswith("--"):
            continue
        name, has_value, value = token.partition("=")
        assert name not in flags, f"{name} given twice"
        following = rest[i + 1] if i + 1 < len(rest) else "--"
        flags[name] = value if has_value else (None if following.startswith("--") else following)
    return service, flags


def gcloud_dict(value: str) -> dict[str, str]:
    """A gcloud dict flag, honouring `^DELIM^` (gcloud topic escaping)."""
    delimiter = ","
    escaped = re.fullmatch(r"\^([^^]+)\^(.*)", value, re.DOTALL)
    if escaped:
        delimiter, value = escaped.groups()
    pairs = [item.split("=", 1) for item in value.split(delimiter)]
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {value!r}"
    return dict(pairs)


def deploy_env(flags: dict[str, str | None]) -> dict[str, str]:
    return gcloud_dict(flags["--set-env-vars"] or "")


# --- the file as a whole ---


def test_cloudbuild_yaml_matches_the_cloud_build_schema() -> None:
    check = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(check), "--builtin-schema", "vendor.cloudbuild", str(CLOUDBUILD)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_logs_go_to_cloud_logging_only(build: dict[str, Any]) -> None:
    # Required when the build runs as a user-specified service account.
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"


def test_every_referenced_substitution_is_defined_and_every_defined_one_is_used(
    build: dict[str, Any],
) -> None:
    used = referenced_names(build)
    defined = set(build["substitutions"])
    assert {name for name in used if name.startswith("_")} <= defined
    assert {name for name in used if not name.startswith("_")} <= set(BUILTINS)
    # Cloud Build fails a build whose substitutions are not all used (MUST_MATCH).
    assert defined <= used


def test_every_substitution_is_documented_in_the_deploy_guide_with_its_default(
    build: dict[str, Any],
) -> None:
    text = DEPLOY_DOC.read_text()
    assert "\n## Substitutions\n" in text
    section = text.split("\n## Substitutions\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `(_[A-Z0-9_]+)` \| ([^|]*) \|", section, re.MULTILINE)
    }
    for name, default in build["substitutions"].items():
        assert name in rows, f"{name} is not in docs/deploy.md's substitution table"
        expected = f"`{default}`" if str(default) else "(empty)"
        assert rows[name] == expected, f"docs/deploy.md gives {name} the default {rows[name]}"


# --- the real gcloud ---


@pytest.fixture(scope="module")
def real_gcloud_checks(
    build: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Everything the real gcloud checks here, run at once in parallel (about a second a call)."""
    gcloud = require_gcloud()
    config = tmp_path_factory.mktemp("gcloud-config")
    bogus = tmp_path_factory.mktemp("bogus") / "cloudbuild.yaml"
    broken = yaml.safe_load(CLOUDBUILD.read_text())
    broken["steps"][0]["bogusfield"] = "x"
    bogus.write_text(yaml.safe_dump(broken))
    submit = ["builds", "submit", "--no-source", "--project", PROJECT, "--config"]
    checks: dict[str, Any] = {
        "valid": Call([*submit, str(CLOUDBUILD)], str(ROOT), str(config)),
        "bogus": Call([*submit, str(bogus)], str(ROOT), str(config)),
    }
    for key_source in KEY_SOURCES:
        for webhook in ("", "stripe-webhook-secret"):
            run = DeployRun(
                build,
                tmp_path_factory.mktemp("deploy"),
                _KEY_SOURCE=key_source,
                _WEBHOOK_SECRET=webhook,
                _BUILD_SA="checkout-deployer" if webhook else "",
            )
            checks[f"{key_source}, webhook secret {webhook or 'none'}"] = run
    calls = [checks["valid"], checks["bogus"]]
    calls += [c for run in checks.values() if isinstance(run, DeployRun) for c in run.recorded]
    run_for_real(calls, gcloud)
    return checks


@pytest.mark.gcloud
def test_the_real_gcloud_accepts_cloudbuild_yaml(real_gcloud_checks: dict[str, Any]) -> None:
    assert real_gcloud_checks["valid"].problem() is None, real_gcloud_checks["valid"].output
    # The same check refuses a build config with an unknown field, so it cannot pass by accident.
    bogus = real_gcloud_checks["bogus"]
    assert bogus.problem() is not None
    assert ".steps[0].bogusfield: unused" in bogus.output, bogus.output


@pytest.mark.gcloud
@pytest.mark.parametrize("key_source", ["set-secrets", "secret-manager"])
@pytest.mark.parametrize("webhook", ["none", "stripe-webhook-secret"])
def test_the_deploy_step_passes_the_real_gcloud(
    real_gcloud_checks: dict[str, Any], key_source: str, webhook: str
) -> None:
    run = real_gcloud_checks[f"{key_source}, webhook secret {webhook}"]
    assert run.result.returncode == 0, run.result.stderr
    assert run.recorded, "the deploy step called no gcloud"
    # Every call the script made, not only the first: each must get past the parser.
    problems = [p for call in run.recorded if (p := call.problem())]
    assert not problems, "gcloud refused:\n" + "\n\n".join(problems)


# --- step 1: the tests ---


def test_tests_run_before_the_deploy_and_the_deploy_waits_for_them(build: dict[str, Any]) -> None:
    ids = [s.get("id") for s in build["steps"]]
    assert ids.index("test") < ids.index("deploy")
    wait_for = step(build, "deploy").get("waitFor")
    # No waitFor means "after every earlier step"; otherwise it must name the test step.
    assert wait_for is None or "test" in wait_for
    assert wait_for != ["-"]


def test_test_step_installs_pinned_requirements_and_runs_pytest(build: dict[str, Any]) -> None:
    test = step(build, "test")
    script = "\n".join(test["args"])
    assert test["name"].startswith("python:3.12")
    assert "pip install" in script
    assert "-r requirements-dev.txt" in script
    assert re.search(r"^python -m pytest\b", script, re.MULTILINE)
    assert "-e" in test["args"][0]  # bash -e: the first failing command fails the step
    assert "|| true" not in script


def test_test_step_leaves_out_the_tests_its_image_cannot_run(build: dict[str, Any]) -> None:
    # python:3.12-slim has no Chromium, no gcloud (so no Firestore emulator), no Java, no curl
    # and no make; CI (.ci/run) runs these.
    script = "\n".join(step(build, "test")["args"])
    (selection,) = re.findall(r'pytest -m "([^"]+)"', script)
    # Every marker that names a tool (all but `slow`), and the tests of this very step.
    assert set(re.findall(r"not (\w+)", selection)) == tool_markers() | {"deploy_step"}
    # Every ordinary run runs this selection without those tools (tests/cloudbuild_step.py).


def tool_markers() -> set[str]:
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    names = {line.split(":")[0] for line in markers["markers"]}
    return names - {"slow", "deploy_step"}


def test_test_step_python_matches_the_deployed_base_image(build: dict[str, Any]) -> None:
    version = re.fullmatch(r"python:(\d+)\.(\d+)(-.*)?", step(build, "test")["name"])
    assert version
    assert build["substitutions"]["_BASE_IMAGE"] == f"python{version[1]}{version[2]}"


# --- step 2: the bytecode ---


def test_the_bytecode_step_compiles_checkout_for_the_base_image_after_the_tests(
    build: dict[str, Any],
) -> None:
    from bench.cold_start import COMPILE

    bytecode = step(build, "bytecode")
    assert bytecode["name"] == step(build, "test")["name"]  # the base image's Python (above)
    # Hash-checked: the image keeps no file times, and a changed source is never run stale.
    assert [bytecode["entrypoint"], *bytecode["args"]] == ["python", *COMPILE]
    assert "checked-hash" in COMPILE and "checkout" in COMPILE
    assert bytecode["waitFor"] == ["test"]
    assert "bytecode" in step(build, "deploy")["waitFor"]


def test_the_bytecode_the_step_writes_is_valid_without_file_times(tmp_path: Path) -> None:
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys

    from bench.cold_start import COMPILE

    shutil.copytree(ROOT / "checkout", tmp_path / "checkout")
    subprocess.run([sys.executable, *COMPILE], cwd=tmp_path, check=True)
    source = tmp_path / "checkout" / "config.py"
    os.utime(source, (0, 0))  # as a build may set them
    cached = Path(importlib.util.cache_from_source(str(source)))
    flags = int.from_bytes(cached.read_bytes()[4:8], "little")
    assert flags == 0b11  # hash-based, checked (PEP 552)
    probe = "import sys, checkout.config; assert not sys.dont_write_bytecode"
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": ""}
    before = cached.read_bytes()
    subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True)
    assert cached.read_bytes() == before  # used as it is, not written again


# --- step 3: the deploy ---


def test_checkout_api_is_an_http_function_in_main_py() -> None:
    tree = ast.parse((ROOT / "main.py").read_text())
    (function,) = [
        node
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "checkout_api"
    ]
    decorators = [ast.unparse(d) for d in function.decorator_list]
    assert "functions_framework.aio.http" in decorators


def test_deploy_is_a_cloud_run_functions_source_deploy_of_checkout_api(
    build: dict[str, Any], tmp_path: Path
) -> None:
    assert step(build, "deploy")["name"] == "gcr.io/google.com/cloudsdktool/cloud-sdk"
    service, flags = DeployRun(build, tmp_path).api_deploy()
    assert service == build["substitutions"]["_SERVICE"]
    assert flags["--source"] == "."
    assert flags["--function"] == "checkout_api"
    assert flags["--base-image"] == build["substitutions"]["_BASE_IMAGE"]
    assert flags["--region"] == build["substitutions"]["_REGION"]
    assert "--allow-unauthenticated" in flags  # a browser's preflight carries no credentials
    assert "--cpu-boost" in flags
    assert "--quiet" in flags  # nobody answers prompts in Cloud Build


def test_the_worker_is_a_private_source_deploy_of_fulfil_order(
    build: dict[str, Any], tmp_path: Path
) -> None:
    service, flags = DeployRun(build, tmp_path).worker_deploy()
    substitutions = build["substitutions"]
    assert service == substitutions["_WORKER_SERVICE"] != substitutions["_SERVICE"]
    assert flags["--source"] == "."
    assert flags["--function"] == "fulfil_order"
    assert flags["--base-image"] == substitutions["_BASE_IMAGE"]
    assert flags["--region"] == substitutions["_REGION"]
    # Only the Eventarc trigger's service account may call it (run.invoker, docs/deploy.md).
    assert "--no-allow-unauthenticated" in flags
    assert "--allow-unauthenticated" not in flags
    # Reached only from inside the project: Eventarc's Pub/Sub push counts as internal
    # (cloud.google.com/run/docs/securing/ingress), the internet does not.
    assert flags["--ingress"] == "internal"
    assert flags["--service-account"] == f"checkout-worker@{PROJECT}.iam.gserviceaccount.com"
    assert "--quiet" in flags
    # A delivery past the request timeout goes on; with its CPU it keeps renewing its claim.
    assert flags["--timeout"] == substitutions["_WORKER_TIMEOUT"] == "600s"
    assert "--no-cpu-throttling" in flags


@pytest.mark.parametrize(("topic", "expected"), [(None, "checkout-orders"), ("orders-v2", None)])
def test_the_api_and_the_worker_name_the_same_order_topic_in_this_project(
    build: dict[str, Any], tmp_path: Path, topic: str | None, expected: str | None
) -> None:
    run = DeployRun(build, tmp_path, **({"_ORDER_TOPIC": topic} if topic else {}))
    path = f"projects/{PROJECT}/topics/{expected or topic}"
    assert deploy_env(run.api_deploy()[1])["ORDER_EVENTS_TOPIC"] == path
    assert deploy_env(run.worker_deploy()[1])["ORDER_EVENTS_TOPIC"] == path


def test_the_worker_shares_the_apis_ledger_project_and_delivery_function(
    build: dict[str, Any], tmp_path: Path
) -> None:
    run = DeployRun(
        build,
        tmp_path,
        _KEY_SOURCE="secret-manager",
        _WEBHOOK_SECRET="stripe-webhook-secret",
        _ALLOWED_ORIGINS="https://app.example.com,https://www.example.com",
        _DELIVER_ORDER="shop.orders:deliver",
        _EXTRA_ENV_VARS="FIRESTORE_DATABASE=orders|LEDGER_LEASE_SECONDS=30",
    )
    api, worker = deploy_env(run.api_deploy()[1]), deploy_env(run.worker_deploy()[1])
    shared = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "ORDER_LEDGER": "firestore",
        "ORDER_EVENTS_TOPIC": f"projects/{PROJECT}/topics/checkout-orders",
        "DELIVER_ORDER": "shop.orders:deliver",
        "FIRESTORE_DATABASE": "orders",
        "LEDGER_LEASE_SECONDS": "30",
        "FRONTEND_URL": FRONTEND_URL,  # the settings require it on Cloud Run
        "DEPLOYMENT_ID": "checkout-api",
    }
    assert shared.items() <= api.items()
    # No CORS, no Stripe secrets, no API request timeout; a delivery's time limit a minute under
    # the worker's request timeout (_WORKER_TIMEOUT, 600s), and only on the worker.
    assert worker == {**shared, "DELIVERY_TIMEOUT_SECONDS": "540"}
    assert "DELIVERY_TIMEOUT_SECONDS" not in api
    _, flags = run.worker_deploy()
    assert not {"--set-secrets", "--clear-secrets"} & set(flags)


def test_the_workers_request_timeout_is_what_doctor_wants_of_the_ack_deadline(
    build: dict[str, Any],
) -> None:
    # The subscription's ack deadline must cover the worker's request timeout (doctor checks it
    # against WORKER_REQUEST_TIMEOUT_S), and a delivery's own limit must end before both.
    seconds = int(str(build["substitutions"]["_WORKER_TIMEOUT"]).removesuffix("s"))
    assert seconds == WORKER_REQUEST_TIMEOUT_S == 600  # also Pub/Sub's longest ack deadline
    assert load_settings({}).delivery_timeout_seconds < seconds


def test_the_delivery_function_is_left_to_the_default_when_unnamed(
    build: dict[str, Any], tmp_path: Path
) -> None:
    run = DeployRun(build, tmp_path)
    assert "DELIVER_ORDER" not in deploy_env(run.api_deploy()[1])
    assert "DELIVER_ORDER" not in deploy_env(run.worker_deploy()[1])


@pytest.mark.parametrize(
    ("worker_sa", "expected"),
    [
        ("fulfilment", f"fulfilment@{PROJECT}.iam.gserviceaccount.com"),
        ("w@other.iam.gserviceaccount.com", "w@other.iam.gserviceaccount.com"),
    ],
)
def test_the_worker_runs_as_its_own_service_account(
    build: dict[str, Any], tmp_path: Path, worker_sa: str, expected: str
) -> None:
    run = DeployRun(build, tmp_path, _WORKER_RUNTIME_SA=worker_sa, _BUILD_SA="checkout-deployer")
    _, worker = run.worker_deploy()
    _, api = run.api_deploy()
    assert worker["--service-account"] == expected
    assert api["--service-account"] == f"checkout-runtime@{PROJECT}.iam.gserviceaccount.com"
    # Both source builds run as the named build account.
    assert worker["--build-service-account"] == api["--build-service-account"]


@pytest.mark.parametrize("key_source", ["set-secrets", "secret-manager"])
def test_deploy_passes_every_knob_from_its_substitution(
    build: dict[str, Any], tmp_path: Path, key_source: str
) -> None:
    _, flags = DeployRun(
        build,
        tmp_path,
        _KEY_SOURCE=key_source,
        _MIN_INSTANCES="1",
        _MAX_INSTANCES="7",
        _TIMEOUT="45s",
        _MEMORY="1Gi",
    ).api_deploy()
    assert flags["--min-instances"] == "1"
    assert flags["--max-instances"] == "7"
    assert flags["--timeout"] == "45s"
    assert flags["--memory"] == "1Gi"
    env = deploy_env(flags)
    assert env["FRONTEND_URL"] == FRONTEND_URL
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
    # The service checks its Stripe budget against the timeout Cloud Run actually enforces.
    assert env["REQUEST_TIMEOUT_SECONDS"] == "45s"
    assert load_settings(env).request_timeout_seconds == 45


def test_the_deployed_defaults_fit_the_deployed_request_timeout(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, flags = DeployRun(build, tmp_path, _KEY_SOURCE="secret-manager").api_deploy()
    env = {"K_SERVICE": "checkout-api", **deploy_env(flags)}
    settings = load_settings(env)  # raises ConfigError if the budget did not fit
    assert settings.request_timeout_seconds == 60


@pytest.mark.parametrize("ledger", [None, "memory"])
def test_the_order_ledger_is_firestore_unless_the_substitution_says_memory(
    build: dict[str, Any], tmp_path: Path, ledger: str | None
) -> None:
    overrides = {"_ORDER_LEDGER": ledger} if ledger else {}
    _, flags = DeployRun(build, tmp_path, **overrides).api_deploy()
    env = deploy_env(flags)
    assert env["ORDER_LEDGER"] == (ledger or "firestore")
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT  # the Firestore client's project


@pytest.mark.parametrize("concurrency", [None, "500"])
def test_concurrency_is_cloud_runs_alone_with_no_thread_setting(
    build: dict[str, Any], tmp_path: Path, concurrency: str | None
) -> None:
    # The function is async: one event loop takes every concurrent request, so THREADS (the
    # gunicorn setting of the old threaded server) means nothing and is not deployed.
    overrides = {"_CONCURRENCY": concurrency} if concurrency else {}
    _, flags = DeployRun(build, tmp_path, **overrides).api_deploy()
    expected = concurrency or build["substitutions"]["_CONCURRENCY"]
    assert flags["--concurrency"] == expected
    assert "THREADS" not in deploy_env(flags)
    assert "WORKERS" not in deploy_env(flags)  # one worker, one event loop, per vCPU


def test_set_secrets_mode_injects_the_pinned_key_version(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, flags = DeployRun(build, tmp_path, _KEY_SOURCE="set-secrets").api_deploy()
    assert gcloud_dict(flags["--set-secrets"] or "") == {
        "STRIPE_SECRET_KEY": "stripe-secret-key:1",
        # The webhook is part of every deploy: its secret is wired by default (issue 22).
        "STRIPE_WEBHOOK_SECRET": "stripe-webhook-secret:1",
    }
    assert "STRIPE_SECRET_NAME" not in deploy_env(flags)
    assert "--clear-secrets" not in flags


def test_set_secrets_mode_adds_the_webhook_secret_when_named(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, flags = DeployRun(
        build,
        tmp_path,
        _KEY_SOURCE="set-secrets",
        _STRIPE_SECRET_VERSION="3",
        _WEBHOOK_SECRET="stripe-webhook-secret",
        _WEBHOOK_SECRET_VERSION="2",
    ).api_deploy()
    assert gcloud_dict(flags["--set-secrets"] or "") == {
        "STRIPE_SECRET_KEY": "stripe-secret-key:3",
        "STRIPE_WEBHOOK_SECRET": "stripe-webhook-secret:2",
    }


def test_secret_manager_mode_names_the_secrets_and_clears_injected_ones(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, flags = DeployRun(
        build,
        tmp_path,
        _KEY_SOURCE="secret-manager",
        _WEBHOOK_SECRET="stripe-webhook-secret",
    ).api_deploy()
    env = deploy_env(flags)
    assert env["STRIPE_SECRET_NAME"] == "stripe-secret-key"
    assert env["STRIPE_WEBHOOK_SECRET_NAME"] == "stripe-webhook-secret"
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT  # resolves the bare secret names
    assert "--set-secrets" not in flags
    assert "--clear-secrets" in flags  # else a key injected by an earlier deploy would still win


def test_webhook_secret_is_not_wired_when_unnamed(build: dict[str, Any], tmp_path: Path) -> None:
    _, flags = DeployRun(
        build, tmp_path, _KEY_SOURCE="secret-manager", _WEBHOOK_SECRET=""
    ).api_deploy()
    assert "STRIPE_WEBHOOK_SECRET_NAME" not in deploy_env(flags)


def test_allowed_origins_keep_their_commas(build: dict[str, Any], tmp_path: Path) -> None:
    origins = "https://app.example.com,https://www.example.com"
    _, flags = DeployRun(build, tmp_path, _ALLOWED_ORIGINS=origins).api_deploy()
    assert deploy_env(flags)["ALLOWED_ORIGINS"] == origins


def test_allowed_origins_are_left_to_the_frontend_origin_when_empty(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, flags = DeployRun(build, tmp_path).api_deploy()
    assert "ALLOWED_ORIGINS" not in deploy_env(flags)


def test_extra_env_vars_are_added(build: dict[str, Any], tmp_path: Path) -> None:
    _, flags = DeployRun(
        build,
        tmp_path,
        _EXTRA_ENV_VARS="PRICE_AMOUNT=500|RETURN_PATH=/done?s={CHECKOUT_SESSION_ID}",
    ).api_deploy()
    env = deploy_env(flags)
    assert env["PRICE_AMOUNT"] == "500"
    assert env["RETURN_PATH"] == "/done?s={CHECKOUT_SESSION_ID}"


@pytest.mark.parametrize(
    ("runtime_sa", "expected"),
    [
        ("checkout-runtime", f"checkout-runtime@{PROJECT}.iam.gserviceaccount.com"),
        ("run@other.iam.gserviceaccount.com", "run@other.iam.gserviceaccount.com"),
    ],
)
def test_runtime_service_account_is_an_email(
    build: dict[str, Any], tmp_path: Path, runtime_sa: str, expected: str
) -> None:
    _, flags = DeployRun(build, tmp_path, _RUNTIME_SA=runtime_sa).api_deploy()
    assert flags["--service-account"] == expected


def test_source_build_service_account_is_passed_only_when_named(
    build: dict[str, Any], tmp_path: Path
) -> None:
    _, default = DeployRun(build, tmp_path / "default").api_deploy()
    assert "--build-service-account" not in default  # Cloud Build's default builds the source
    _, named = DeployRun(build, tmp_path / "named", _BUILD_SA="checkout-deployer").api_deploy()
    assert named["--build-service-account"] == (
        f"projects/{PROJECT}/serviceAccounts/checkout-deployer@{PROJECT}.iam.gserviceaccount.com"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"_FRONTEND_URL": ""}, "_FRONTEND_URL"),
        ({"_KEY_SOURCE": "env"}, "_KEY_SOURCE"),
        ({"_ORDER_LEDGER": "redis"}, "_ORDER_LEDGER"),
        ({"_ORDER_TOPIC": ""}, "_ORDER_TOPIC"),
        ({"_ORDER_TOPIC": "projects/other/topics/orders"}, "_ORDER_TOPIC"),
        ({"_EXTRA_ENV_VARS": "PRICE_AMOUNT=500|DEPLOYMENT_ID=shop"}, "_DEPLOYMENT_ID"),
    ],
)
def test_deploy_refuses_to_run_with_a_bad_configuration(
    build: dict[str, Any], tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    run = DeployRun(build, tmp_path, **overrides)
    assert run.result.returncode != 0
    assert message in run.result.stderr
    assert run.calls == []


# --- the reconciler job ---


def test_the_reconciler_is_a_source_deployed_job_running_python_m_checkout_reconcile(
    build: dict[str, Any], tmp_path: Path
) -> None:
    job, flags = DeployRun(build, tmp_path).job_deploy()
    substitutions = build["substitutions"]
    assert job == substitutions["_RECONCILE_JOB"] == "checkout-reconcile"
    assert flags["--source"] == "."
    assert flags["--command"] == "python"
    assert flags["--args"] == "-m,checkout,reconcile"
    assert flags["--region"] == substitutions["_REGION"]
    # The API's identity: it may read the key and the ledger and publish, as the API does.
    assert flags["--service-account"] == f"checkout-runtime@{PROJECT}.iam.gserviceaccount.com"
    assert flags["--max-retries"] == "0"  # the next hourly run is the retry
    assert "--quiet" in flags


@pytest.mark.parametrize("key_source", KEY_SOURCES)
def test_the_reconciler_job_gets_exactly_the_apis_settings_and_secrets(
    build: dict[str, Any], tmp_path: Path, key_source: str
) -> None:
    run = DeployRun(
        build,
        tmp_path,
        _KEY_SOURCE=key_source,
        _ALLOWED_ORIGINS="https://app.example.com,https://www.example.com",
        _EXTRA_ENV_VARS="STRIPE_PRICE_ID=price_board|PRODUCT_NAME=Board|PRICE_CURRENCY=eur",
    )
    _, api = run.api_deploy()
    _, job = run.job_deploy()
    assert deploy_env(job) == deploy_env(api)
    for flag in ("--set-secrets", "--clear-secrets"):
        assert (flag in job, job.get(flag)) == (flag in api, api.get(flag))
    # The catalogue: a non-default price is sold, and so checked, by both alike.
    assert {"STRIPE_PRICE_ID", "PRODUCT_NAME", "PRICE_CURRENCY"} <= set(deploy_env(job))


@pytest.mark.parametrize(("deployment_id", "expected"), [(None, "checkout-api"), ("shop", "shop")])
def test_the_api_worker_and_job_carry_one_explicit_deployment_id(
    build: dict[str, Any], tmp_path: Path, deployment_id: str | None, expected: str
) -> None:
    overrides = {"_DEPLOYMENT_ID": deployment_id} if deployment_id else {}
    run = DeployRun(build, tmp_path, _KEY_SOURCE="secret-manager", **overrides)
    _, api = run.api_deploy()
    _, worker = run.worker_deploy()
    _, job = run.job_deploy()
    assert {deploy_env(f)["DEPLOYMENT_ID"] for f in (api, worker, job)} == {expected}
    # As each runs: the API with K_SERVICE, the job with CLOUD_RUN_JOB and no K_SERVICE. The
    # job's sessions are the API's (checkout/orders/catalogue.py), whatever the service is named.
    as_api = load_settings({**deploy_env(api), "K_SERVICE": "checkout-api"})
    as_job = load_settings({**deploy_env(job), "CLOUD_RUN_JOB": "checkout-reconcile"})
    assert as_job.deployment_id == as_api.deployment_id == expected
    assert (as_job.stripe_price_id, as_job.price_amount) == (
        as_api.stripe_price_id,
        as_api.price_amount,
    )
