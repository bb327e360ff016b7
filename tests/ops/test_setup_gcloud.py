"""Every gcloud command `setup` and `teardown` can run, parsed by the real gcloud offline.

Each command of the plan (what it makes, how it looks, how teardown removes it, the facts it
reads), for the option combinations docs/deploy.md shows, runs through the real CLI on an empty
CLOUDSDK_CONFIG: a valid command stops at the missing account, a bad flag at the parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from checkout.ops.setup import preconditions_commands
from checkout.ops.setup_plan import Fact, Options, build_plan, fill
from tests.gcloud_cli import Call, require_gcloud, run_for_real
from tests.support import ROOT

FACTS = {
    "PROJECT_NUMBER": "123456789012",
    "DEFAULT_BUILD_SA": "123456789012-compute@developer.gserviceaccount.com",
    "API_URL": "https://checkout-api-123456789012.us-central1.run.app",
    "SUBSCRIPTION_ID": "eventarc-us-central1-checkout-orders-worker-sub-123",
    "FOUND": "projects/demo-project/alertPolicies/123",
}

# The combinations the docs show: the defaults, and every option set at once.
COMBINATIONS = {
    "defaults": Options("demo-project", "us-central1", "https://app.example.com"),
    "every option": Options(
        "demo-project",
        "europe-west1",
        "https://shop.example.com",
        allowed_origins="https://shop.example.com,https://www.example.com",
        database="checkout-orders",
        service="shop-api",
        worker_service="shop-worker",
        reconcile_job="shop-reconcile",
        deployment_id="shop",
        key_source="secret-manager",
        price_amount="500",
        notification_channel="projects/demo-project/notificationChannels/1234567890",
    ),
    "a price id": Options(
        "demo-project", "us-central1", "https://app.example.com", price_id="price_123"
    ),
}


def every_command(options: Options) -> list[tuple[str, ...]]:
    commands = []
    for item in build_plan(options).items:
        if isinstance(item, Fact):
            commands.append(item.argv)
            continue
        for argv in (item.argv, item.look.argv if item.look else None, item.delete):
            if argv is not None and argv[0] == "gcloud":
                commands.append(argv)
    commands += preconditions_commands(options)
    return [fill(argv, FACTS) for argv in commands]


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Call]]:
    gcloud = require_gcloud()
    config = tmp_path_factory.mktemp("empty-gcloud-config")
    # One call per distinct command (a resource's policy is looked up once per binding on it).
    calls: dict[tuple[str, ...], Call] = {}
    runs = {
        name: [
            calls.setdefault(argv, Call(list(argv[1:]), str(ROOT), str(config)))
            for argv in every_command(options)
        ]
        for name, options in COMBINATIONS.items()
    }
    run_for_real(list(calls.values()), gcloud)
    return runs


@pytest.mark.gcloud
@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_every_command_of_setup_and_teardown_passes_the_real_gcloud(
    parsed: dict[str, list[Call]], combination: str
) -> None:
    calls = parsed[combination]
    assert len(calls) > 100
    problems = [p for call in calls if (p := call.problem()) and not _no_credentials(call)]
    assert not problems, "gcloud refused:\n" + "\n\n".join(problems)


def _no_credentials(call: Call) -> bool:
    # print-access-token reads application-default credentials, not the account: on an empty
    # config it stops at those, after parsing.
    return call.argv[:2] == ["auth", "application-default"] and (
        "default credentials were not found" in call.output
    )


@pytest.mark.gcloud
def test_the_real_gcloud_refuses_a_bad_flag_the_same_way(tmp_path: Path) -> None:
    # The oracle can fail: a misspelt flag of a plan command is refused at the parser.
    gcloud = require_gcloud()
    argv = every_command(COMBINATIONS["defaults"])[2]
    call = Call([*argv[1:], "--bogus-flag=1"], str(ROOT), str(tmp_path))
    run_for_real([call], gcloud)
    assert call.problem() is not None
    assert "unrecognized arguments" in call.output
