"""openapi.yaml: a valid OpenAPI 3.1 document, true to the code, and fuzzed by schemathesis.

schemathesis runs as its CLI against a live functions-framework server backed by the emulator:
every operation, every check (`--checks all`: no server error, status codes, content types,
headers and bodies conforming to the document, positive data accepted, negative data rejected,
405 with `Allow` for other methods), capped at MAX_EXAMPLES per operation and a fixed seed.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from checkout.api.routes import ENDPOINTS
from checkout.errors import CODES
from checkout.orders.model import Order
from tests.support import ROOT, a_session

SPEC_PATH = ROOT / "openapi.yaml"
MAX_EXAMPLES = 50
SEED = 20261126
FUZZ_WEBHOOK_SECRET = "whsec_testFuzzOnlyFake"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Stripe-Signature is an HMAC of the body: no schema can describe a valid one, so a schema-valid
# event is still refused (400 invalid_signature), and schemathesis must be told so. Any other
# warning (an unusable regex, say) fails the run.
SCHEMATHESIS_CONFIG = """\
warnings = { fail-on = true }

[[operations]]
include-operation-id = "receiveStripeEvent"
checks.positive_data_acceptance.expected-statuses = ["200", "400"]
warnings = false
"""


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def operations(spec: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_and_method_is_documented_and_nothing_else(spec):
    routed = set()
    for endpoint in ENDPOINTS.values():
        methods = set(endpoint.allowed_methods)
        routed |= {(method, endpoint.path) for method in methods}
    assert operations(spec) == routed


def test_every_error_code_the_api_can_answer_is_documented():
    documented = set(re.findall(r"\b(?:const: |enum: \[)([a-z_, ]+)", SPEC_PATH.read_text()))
    documented = {code.strip() for group in documented for code in group.split(",")}
    # The registry, not the call sites: a code is answerable only if checkout/errors.py defines it
    # (tests/test_layout.py checks that nothing else builds an ApiError).
    assert len(CODES) > 20
    assert set(CODES) <= documented, f"undocumented codes: {sorted(set(CODES) - documented)}"


def test_the_status_schema_has_the_fields_the_code_answers(spec):
    schema = spec["components"]["schemas"]["SessionStatus"]
    answers = [Order(session_id="cs_test_a").public(), a_session().public()]
    for answer in answers:
        assert set(answer) == set(schema["properties"]) == set(schema["required"])
    assert schema["properties"]["amount_refunded"]["type"] == "integer"
    refunded = Order(
        session_id="cs_test_a", status="complete", payment_status="paid", refunded=True
    )
    disputed = Order(
        session_id="cs_test_a", status="complete", payment_status="paid", disputes={"dp_1": "lost"}
    )
    assert {refunded.outcome, disputed.outcome} == {"refunded", "disputed"}
    assert {"refunded", "disputed"} <= set(schema["properties"]["outcome"]["enum"])


def test_the_webhooks_retryable_codes_are_its_503_with_retry_after(spec):
    responses = spec["paths"]["/api/checkout/webhook"]["post"]["responses"]
    assert "Retry-After" in responses["503"]["headers"]
    retry_later = spec["components"]["schemas"]["WebhookRetryLater"]["allOf"][1]
    codes = set(retry_later["properties"]["code"]["enum"])
    assert "order_events_unavailable" in codes
    for code in codes:
        assert CODES[code].status == 503, code
        assert CODES[code].retry_after is not None, code


def test_error_schema_is_closed(spec):
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code", "request_id"]
    assert error["additionalProperties"] is False


def run_schemathesis(url: str, spec_path: Path, workdir: Path, *args: str) -> tuple[int, str]:
    """The schemathesis CLI, run in `workdir` (its caches land there, not in the repo)."""
    (workdir / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        str(spec_path),
        f"--url={url}",
        "--checks=all",
        f"--seed={SEED}",
        "--workers=1",  # hypothesis describes strategies with ast; threads race in CPython 3.11
        "--request-timeout=10",
        "--generation-database=none",
        "--no-color",
        *args,
    ]
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=150, check=False
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_schemathesis_finds_nothing_against_the_live_server(
    spec, live_server, stripe_emulator, tmp_path
):
    server = live_server(STRIPE_WEBHOOK_SECRET=FUZZ_WEBHOOK_SECRET)
    code, output = run_schemathesis(
        server.url, SPEC_PATH, tmp_path, f"--max-examples={MAX_EXAMPLES}"
    )
    summary = output[output.rfind("SUMMARY") :]
    assert code == 0, output[-6000:]
    assert re.search(r"=+ No issues found in [\d.]+s =+", summary), summary
    count = len(operations(spec))
    assert f"Selected: {count}/{count}" in summary
    assert f"Tested: {count}" in summary
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert generated and generated[1] == generated[2] and int(generated[1]) > 10 * count
    print(re.search(r"Test cases:\n\s+(.*)", summary)[1])  # the summary line, with -s
    assert stripe_emulator.calls()["sessions_created"] > 0  # the fuzzer did reach Stripe


@pytest.mark.slow
def test_schemathesis_would_catch_a_schema_violation(spec, live_server, tmp_path):
    # Guard against a run that cannot fail: tell schemathesis that create returns one more field.
    wrong_spec = copy.deepcopy(spec)
    created = wrong_spec["components"]["schemas"]["CreatedSession"]
    created["required"] = [*created["required"], "amount"]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(wrong_spec))
    server = live_server()
    code, output = run_schemathesis(
        server.url,
        wrong,
        tmp_path,
        "--max-examples=5",
        "--phases=fuzzing",
        "--include-operation-id=createEmbeddedSession",
    )
    assert code != 0
    assert "Response violates schema" in output
    assert '"amount" is a required property' in output
