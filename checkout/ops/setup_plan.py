"""The first deploy as data: every command `python -m checkout setup` runs, in the order that works.

Setup runs it, `--dry-run` prints it, teardown walks it backwards, docs/deploy.md shows it."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

Argv = tuple[str, ...]

# Fixed names: setup makes them, teardown removes them; what a user may choose is in Options.
ORDER_TOPIC = "checkout-orders"
DEAD_LETTER_TOPIC = "checkout-orders-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "checkout-orders-dead-letter-sub"
TRIGGER = "checkout-orders-worker"
SCHEDULE = "checkout-reconcile-hourly"
STRIPE_SECRET = "stripe-secret-key"  # noqa: S105  # names of secrets, not secrets
WEBHOOK_SECRET = "stripe-webhook-secret"  # noqa: S105
SOURCE_REPOSITORY = "cloud-run-source-deploy"  # the repository `run deploy --source` pushes to
TTL_COLLECTION = "checkout_events"
MAX_DELIVERY_ATTEMPTS = 10
# Equal to the worker's request timeout (cloudbuild.yaml's _WORKER_TIMEOUT, 600s, which is also
# Pub/Sub's maximum): a push that is still running is never redelivered beside itself.
ACK_DEADLINE_SECONDS = 600
# What the services and the job run until the first build replaces them: Google's samples. They
# exist so that every Cloud Run role is granted on the service or job itself, not the project.
PLACEHOLDER_SERVICE_IMAGE = "us-docker.pkg.dev/cloudrun/container/hello"
PLACEHOLDER_JOB_IMAGE = "us-docker.pkg.dev/cloudrun/container/job"
APIS = (
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "firestore.googleapis.com",
    "pubsub.googleapis.com",
    "eventarc.googleapis.com",
    "cloudscheduler.googleapis.com",
    "storage.googleapis.com",
)
ALERTS = (
    # (metric, description, policy display name): the shape of docs/operations.md's dispute alert.
    (
        "checkout_dispute_opened",
        "Stripe disputes opened on checkout orders",
        "Checkout: a dispute was opened",
    ),
    (
        "checkout_change_undelivered",
        "Order changes the worker could not deliver",
        "Checkout: an order change was not delivered",
    ),
)
ACCOUNTS = (
    # (option name, account id, display name)
    ("runtime", "checkout-runtime", "checkout_api runtime"),
    ("worker", "checkout-worker", "fulfil_order runtime"),
    ("trigger", "checkout-trigger", "Eventarc trigger to fulfil_order"),
    ("deployer", "checkout-deployer", "checkout_api build and deploy"),
    ("scheduler", "checkout-scheduler", "Starts the reconciler"),
)


@dataclass(frozen=True)
class Options:
    """What a user chooses; every other name is fixed above."""

    project: str
    region: str
    frontend_url: str
    allowed_origins: str = ""
    database: str = "(default)"
    service: str = "checkout-api"
    worker_service: str = "checkout-worker"
    reconcile_job: str = "checkout-reconcile"
    deployment_id: str = ""
    key_source: str = "set-secrets"
    price_amount: str = ""
    price_id: str = ""
    notification_channel: str = ""

    def account(self, role: str) -> str:
        (account_id,) = [a for r, a, _ in ACCOUNTS if r == role]
        return f"{account_id}@{self.project}.iam.gserviceaccount.com"

    def substitutions(self) -> dict[str, str]:
        """cloudbuild.yaml's substitutions for this deployment (those left out keep defaults)."""
        extra = []
        if self.database != "(default)":
            extra.append(f"FIRESTORE_DATABASE={self.database}")
        if self.price_amount:
            extra.append(f"PRICE_AMOUNT={self.price_amount}")
        if self.price_id:
            extra.append(f"STRIPE_PRICE_ID={self.price_id}")
        values = {
            "_FRONTEND_URL": self.frontend_url,
            "_REGION": self.region,
            "_BUILD_SA": "checkout-deployer",
            "_SERVICE": self.service,
            "_WORKER_SERVICE": self.worker_service,
            "_RECONCILE_JOB": self.reconcile_job,
            "_ALLOWED_ORIGINS": self.allowed_origins,
            "_DEPLOYMENT_ID": self.deployment_id,
            "_KEY_SOURCE": self.key_source,
            "_EXTRA_ENV_VARS": "|".join(extra),
        }
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class Look:
    """How a step finds out whether it is done: run `argv`; exit 0 and the checks below."""

    argv: Argv
    binding: tuple[str, str] | None = None  # (role, member) in the JSON policy it prints
    lines: tuple[str, ...] = ()  # each of these is a line of its output
    not_lines: tuple[str, ...] = ()  # none of these is
    fields: tuple[tuple[str, str], ...] = ()  # (dotted path, value) in the JSON it prints
    # What a resource that exists with other fields means: "update" (run the step's command,
    # which updates it: setup's own settings) or "stop" (the user's: say what differs).
    differs: str = "update"


@dataclass(frozen=True)
class Step:
    title: str
    argv: Argv  # the command that makes it (gcloud ..., or python -m checkout ...)
    look: Look | None  # None: the command is idempotent itself and always runs
    delete: Argv | None = None  # teardown's command; None: teardown leaves it
    data: bool = False  # holds orders or dead letters: teardown deletes it only with --delete-data
    shared: bool = False  # other deploys may use it: teardown deletes it only if setup made it
    env: tuple[tuple[str, str], ...] = ()  # for python steps
    stdin_key: bool = False  # the command reads the Stripe key on standard input
    fix: str = ""


@dataclass(frozen=True)
class Fact:
    """A value to read once what it names exists, e.g. PROJECT_NUMBER."""

    name: str
    argv: Argv


Item = Step | Fact


@dataclass(frozen=True)
class Plan:
    options: Options
    items: tuple[Item, ...] = field(default_factory=tuple)

    def steps(self) -> Iterator[Step]:
        return (item for item in self.items if isinstance(item, Step))


def _g(*args: str, options: Options) -> Argv:
    return ("gcloud", *args, f"--project={options.project}")


def _binding(
    o: Options,
    resource: Argv,
    member: str,
    role: str,
    *,
    why: str,
    condition: str | None = None,
) -> Step:
    """One IAM binding on `resource` (e.g. ("secrets", NAME)); looked up in its policy."""
    group, name, *scope = resource
    group_args = tuple(group.split())
    flags: Argv = (f"--member={member}", f"--role={role}")
    if condition is not None:
        flags += (f"--condition={condition}",)
    elif group == "projects":
        flags += ("--condition=None",)
    target = (*group_args, "add-iam-policy-binding", name, *scope, *flags)
    removal = (*group_args, "remove-iam-policy-binding", name, *scope, *flags)
    look = (*group_args, "get-iam-policy", name, *scope, "--format=json")
    return Step(
        title=f"grant {role} on {_short(name) if group != 'projects' else 'the project'} to "
        f"{_short(member.split(':', 1)[1])} ({why})",
        argv=_g(*target, options=o),
        look=Look(_g(*look, options=o), binding=(role, member)),
        delete=_g(*removal, options=o),
        fix="you need permission to set IAM policies (Owner, or Security Admin)",
    )


def _made(
    o: Options,
    title: str,
    create: Argv,
    resource: Argv,
    *,
    quiet: bool = True,
    data: bool = False,
    shared: bool = False,
    stdin_key: bool = False,
) -> Step:
    """`create` makes `resource` (named as for _binding); describe finds it, delete removes it."""
    group, name, *scope = resource
    noun = tuple(group.split())
    return Step(
        title,
        _g(*create, options=o),
        Look(_g(*noun, "describe", name, *scope, options=o)),
        delete=_g(*noun, "delete", name, *scope, *("--quiet",) * quiet, options=o),
        data=data,
        shared=shared,
        stdin_key=stdin_key,
    )


def _short(name: str) -> str:
    """An account or resource as a progress line names it."""
    if "@gcp-sa-pubsub." in name:
        return "the Pub/Sub service agent"
    if "DEFAULT_BUILD_SA" in name:
        return "the default build account"
    if "/subscriptions/" in name:
        return "the trigger's subscription"
    return name.split("@", 1)[0]


def build_plan(o: Options) -> Plan:
    """Every step of the first deploy, in the one order that works."""
    region = f"--region={o.region}"
    sa = {role: f"serviceAccount:{o.account(role)}" for role, _, _ in ACCOUNTS}
    agent = "serviceAccount:service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
    database = f"--database={o.database}"
    sources_bucket = f"gs://run-sources-{o.project}-{o.region}"
    build_bucket = f"gs://{o.project}_cloudbuild"
    subscription = f"projects/{o.project}/subscriptions/${{SUBSCRIPTION_ID}}"
    ledger_only = (
        f'expression=resource.name=="projects/{o.project}/databases/{o.database}",'
        "title=checkout-ledger-only"
    )
    items: list[Item] = [
        Fact(
            "PROJECT_NUMBER",
            ("gcloud", "projects", "describe", o.project, "--format=value(projectNumber)"),
        ),
        Step(
            "enable the APIs",
            _g("services", "enable", *APIS, options=o),
            Look(
                _g("services", "list", "--enabled", "--format=value(config.name)", options=o),
                lines=APIS,
            ),
            fix="billing must be enabled on the project",
        ),
        Step(
            f"create the Firestore database {o.database} (the order ledger)",
            _g(
                "firestore",
                "databases",
                "create",
                database,
                f"--location={o.region}",
                "--type=firestore-native",
                options=o,
            ),
            Look(
                _g("firestore", "databases", "describe", database, "--format=json", options=o),
                fields=(("locationId", o.region), ("type", "FIRESTORE_NATIVE")),
                differs="stop",
            ),
            delete=_g("firestore", "databases", "delete", database, "--quiet", options=o),
            data=True,
            fix="choose another --database, or delete the one that differs",
        ),
        Step(
            f"delete old {TTL_COLLECTION} records after expire_at (TTL)",
            _g(
                "firestore",
                "fields",
                "ttls",
                "update",
                "expire_at",
                f"--collection-group={TTL_COLLECTION}",
                database,
                "--enable-ttl",
                "--async",
                options=o,
            ),
            Look(
                _g(
                    "firestore",
                    "fields",
                    "ttls",
                    "list",
                    f"--collection-group={TTL_COLLECTION}",
                    database,
                    "--format=value(name.basename())",
                    options=o,
                ),
                lines=("expire_at",),
            ),
        ),
    ]
    for topic in (ORDER_TOPIC, DEAD_LETTER_TOPIC):
        items.append(
            _made(
                o,
                f"create the topic {topic}",
                ("pubsub", "topics", "create", topic),
                ("pubsub topics", topic),
                quiet=False,
            )
        )
    items.append(
        _made(
            o,
            f"create {DEAD_LETTER_SUBSCRIPTION} (keeps dead letters 7 days)",
            (
                "pubsub",
                "subscriptions",
                "create",
                DEAD_LETTER_SUBSCRIPTION,
                f"--topic={DEAD_LETTER_TOPIC}",
                "--message-retention-duration=7d",
            ),
            ("pubsub subscriptions", DEAD_LETTER_SUBSCRIPTION),
            quiet=False,
            data=True,
        )
    )
    for role, account_id, display in ACCOUNTS:
        items.append(
            _made(
                o,
                f"create the service account {account_id}",
                ("iam", "service-accounts", "create", account_id, f"--display-name={display}"),
                ("iam service-accounts", o.account(role)),
            )
        )
    location = f"--location={o.region}"
    items.append(
        _made(
            o,
            f"create the Artifact Registry repository {SOURCE_REPOSITORY} (built images)",
            (
                "artifacts",
                "repositories",
                "create",
                SOURCE_REPOSITORY,
                "--repository-format=docker",
                location,
            ),
            ("artifacts repositories", SOURCE_REPOSITORY, location),
            shared=True,
        )
    )
    for bucket, why in (
        (build_bucket, "gcloud builds submit's uploads"),
        (sources_bucket, "run deploy --source's uploads"),
    ):
        items.append(
            Step(
                f"create the bucket {bucket} ({why})",
                _g(
                    "storage",
                    "buckets",
                    "create",
                    bucket,
                    location,
                    "--uniform-bucket-level-access",
                    options=o,
                ),
                Look(_g("storage", "buckets", "describe", bucket, options=o)),
                delete=_g("storage", "rm", "--recursive", bucket, options=o),
                shared=True,
            )
        )
    placeholder = f"--image={PLACEHOLDER_SERVICE_IMAGE}"
    items += [
        _made(
            o,
            f"create the worker service {o.worker_service} (private, internal; the build replaces"
            " its placeholder)",
            (
                "run",
                "deploy",
                o.worker_service,
                placeholder,
                region,
                "--no-allow-unauthenticated",
                "--ingress=internal",
                f"--service-account={o.account('worker')}",
                "--quiet",
            ),
            ("run services", o.worker_service, region),
        ),
        _made(
            o,
            f"create the API service {o.service} (the build replaces its placeholder)",
            (
                "run",
                "deploy",
                o.service,
                placeholder,
                region,
                "--no-allow-unauthenticated",
                f"--service-account={o.account('runtime')}",
                "--quiet",
            ),
            ("run services", o.service, region),
        ),
        _made(
            o,
            f"create the reconciler job {o.reconcile_job} (the build replaces its placeholder)",
            (
                "run",
                "jobs",
                "create",
                o.reconcile_job,
                f"--image={PLACEHOLDER_JOB_IMAGE}",
                region,
                f"--service-account={o.account('runtime')}",
                "--quiet",
            ),
            ("run jobs", o.reconcile_job, region),
        ),
        _made(
            o,
            f"store the Stripe key as the secret {STRIPE_SECRET} (read from a file or stdin)",
            ("secrets", "create", STRIPE_SECRET, "--replication-policy=automatic", "--data-file=-"),
            ("secrets", STRIPE_SECRET),
            stdin_key=True,
        ),
        _made(
            o,
            f"create the secret {WEBHOOK_SECRET} (register-webhook stores the signing secret)",
            ("secrets", "create", WEBHOOK_SECRET, "--replication-policy=automatic"),
            ("secrets", WEBHOOK_SECRET),
        ),
        Fact(
            "DEFAULT_BUILD_SA",
            (
                "gcloud",
                "builds",
                "get-default-service-account",
                f"--project={o.project}",
                "--format=value(serviceAccountEmail.basename())",
            ),
        ),
    ]
    default_build = "serviceAccount:${DEFAULT_BUILD_SA}"
    project = ("projects", o.project)
    runtime, worker, deployer = sa["runtime"], sa["worker"], sa["deployer"]
    reader, ledger_user = "roles/secretmanager.secretAccessor", "roles/datastore.user"
    account_user = "roles/iam.serviceAccountUser"
    # (resource, member, role, why): one IAM binding each, in this order.
    grants: list[tuple[Argv, str, str, str]] = [
        (("secrets", STRIPE_SECRET), runtime, reader, "read the Stripe key"),
        (("secrets", WEBHOOK_SECRET), runtime, reader, "read the signing secret"),
        (project, runtime, ledger_user, "the ledger, this database only"),
        (project, worker, ledger_user, "the ledger, this database only"),
        (
            ("pubsub topics", ORDER_TOPIC),
            runtime,
            "roles/pubsub.publisher",
            "publish order changes",
        ),
        (
            ("run services", o.service, region),
            deployer,
            "roles/run.admin",
            "deploy the API and make it public",
        ),
        (
            ("run services", o.worker_service, region),
            deployer,
            "roles/run.developer",
            "deploy the worker",
        ),
        (
            ("run jobs", o.reconcile_job, region),
            deployer,
            "roles/run.developer",
            "deploy the reconciler",
        ),
        (
            ("storage buckets", build_bucket),
            deployer,
            "roles/storage.objectAdmin",
            "read the build's source",
        ),
        (
            ("storage buckets", sources_bucket),
            deployer,
            "roles/storage.objectAdmin",
            "upload and read the functions' source",
        ),
        (
            ("artifacts repositories", SOURCE_REPOSITORY, f"--location={o.region}"),
            deployer,
            "roles/artifactregistry.writer",
            "push the built images",
        ),
        (project, deployer, "roles/cloudbuild.builds.editor", "start the source builds"),
        (project, deployer, "roles/run.builder", "run the functions' source builds as itself"),
        (project, deployer, "roles/logging.logWriter", "write build logs"),
        (project, deployer, "roles/serviceusage.serviceUsageConsumer", "use the project's APIs"),
        (
            project,
            default_build,
            "roles/run.builder",
            "build the reconciler job's source: jobs have no build-account flag",
        ),
        (
            ("iam service-accounts", o.account("runtime")),
            deployer,
            account_user,
            "deploy the API and the job as it",
        ),
        (
            ("iam service-accounts", o.account("worker")),
            deployer,
            account_user,
            "deploy the worker as it",
        ),
        (
            ("iam service-accounts", o.account("deployer")),
            deployer,
            account_user,
            "run the source builds as itself",
        ),
        (
            ("iam service-accounts", "${DEFAULT_BUILD_SA}"),
            deployer,
            account_user,
            "start the job's build as that account",
        ),
        (
            ("run services", o.worker_service, region),
            sa["trigger"],
            "roles/run.invoker",
            "Eventarc's calls to the private worker",
        ),
        (
            ("run jobs", o.reconcile_job, region),
            sa["scheduler"],
            "roles/run.invoker",
            "Cloud Scheduler starts the reconciler",
        ),
        (
            ("pubsub topics", DEAD_LETTER_TOPIC),
            agent,
            "roles/pubsub.publisher",
            "move a message there after 10 attempts",
        ),
        (
            ("iam service-accounts", o.account("trigger")),
            agent,
            "roles/iam.serviceAccountTokenCreator",
            "sign the trigger's tokens, in projects made before April 2021",
        ),
    ]
    # The ledger role is only ever granted on the order ledger's database.
    items += [
        _binding(
            o,
            resource,
            member,
            role,
            why=why,
            condition=ledger_only if role == ledger_user else None,
        )
        for resource, member, role, why in grants
    ]
    describe_api = ("run", "services", "describe", o.service, region)
    items += [
        Fact(
            "API_URL",
            _g(*describe_api, "--format=value(status.url)", options=o),
        ),
        Step(
            "register the Stripe webhook endpoint and store its signing secret",
            (
                "python",
                "-m",
                "checkout",
                "register-webhook",
                "--url=${API_URL}/api/checkout/webhook",
                f"--secret={WEBHOOK_SECRET}",
            ),
            None,
            env=(("STRIPE_SECRET_NAME", STRIPE_SECRET), ("GOOGLE_CLOUD_PROJECT", o.project)),
            fix="gcloud auth application-default login, then run setup again",
        ),
        Step(
            "the first build: test, then deploy the worker, the API and the reconciler job",
            build_command(o),
            Look(
                _g(
                    *describe_api,
                    "--format=value(spec.template.spec.containers[0].image)",
                    options=o,
                ),
                not_lines=(PLACEHOLDER_SERVICE_IMAGE,),
            ),
            fix="read the build's log (the URL above); fix, then run setup again",
        ),
        _made(
            o,
            f"create the Eventarc trigger {TRIGGER} (the topic to the worker)",
            (
                "eventarc",
                "triggers",
                "create",
                TRIGGER,
                location,
                f"--destination-run-service={o.worker_service}",
                f"--destination-run-region={o.region}",
                "--event-filters=type=google.cloud.pubsub.topic.v1.messagePublished",
                f"--transport-topic=projects/{o.project}/topics/{ORDER_TOPIC}",
                f"--service-account={o.account('trigger')}",
            ),
            ("eventarc triggers", TRIGGER, location),
        ),
        Fact(
            "SUBSCRIPTION_ID",
            _g(
                "eventarc",
                "triggers",
                "describe",
                TRIGGER,
                f"--location={o.region}",
                "--format=value(transport.pubsub.subscription.basename())",
                options=o,
            ),
        ),
        Step(
            f"dead-letter policy ({MAX_DELIVERY_ATTEMPTS} attempts) and ack deadline "
            f"{ACK_DEADLINE_SECONDS}s on the trigger's subscription",
            _g(
                "pubsub",
                "subscriptions",
                "update",
                subscription,
                f"--dead-letter-topic=projects/{o.project}/topics/{DEAD_LETTER_TOPIC}",
                f"--max-delivery-attempts={MAX_DELIVERY_ATTEMPTS}",
                "--min-retry-delay=10s",
                "--max-retry-delay=600s",
                f"--ack-deadline={ACK_DEADLINE_SECONDS}",
                options=o,
            ),
            Look(
                _g("pubsub", "subscriptions", "describe", subscription, "--format=json", options=o),
                fields=(
                    (
                        "deadLetterPolicy.deadLetterTopic",
                        f"projects/{o.project}/topics/{DEAD_LETTER_TOPIC}",
                    ),
                    ("deadLetterPolicy.maxDeliveryAttempts", str(MAX_DELIVERY_ATTEMPTS)),
                    ("ackDeadlineSeconds", str(ACK_DEADLINE_SECONDS)),
                ),
            ),
        ),
        _binding(
            o,
            ("pubsub subscriptions", subscription),
            agent,
            "roles/pubsub.subscriber",
            why="acknowledge the message it dead-letters",
        ),
        _made(
            o,
            f"run {o.reconcile_job} hourly ({SCHEDULE})",
            (
                "scheduler",
                "jobs",
                "create",
                "http",
                SCHEDULE,
                location,
                "--schedule=0 * * * *",
                "--http-method=POST",
                f"--uri=https://run.googleapis.com/v2/projects/{o.project}/locations/{o.region}"
                f"/jobs/{o.reconcile_job}:run",
                f"--oauth-service-account-email={o.account('scheduler')}",
            ),
            ("scheduler jobs", SCHEDULE, location),
        ),
    ]
    for metric, description, display in ALERTS:
        items += _alert(o, metric, description, display)
    items.append(
        Step(
            "check the whole deployment (doctor); its result is setup's",
            ("python", "-m", "checkout", "doctor", "--url=${API_URL}/api/checkout/webhook"),
            None,
            env=doctor_env(o),
            fix="each FAIL line says what to do",
        )
    )
    return Plan(o, tuple(items))


def _alert(o: Options, metric: str, description: str, display: str) -> list[Item]:
    condition = (
        f'metric.type="logging.googleapis.com/user/{metric}" AND '
        '(resource.type="cloud_run_revision" OR resource.type="cloud_run_job")'
    )
    channels = (f"--notification-channels={o.notification_channel}",) * bool(o.notification_channel)
    policies = ("alpha", "monitoring", "policies")
    return [
        _made(
            o,
            f"count {metric} log lines (a log-based metric)",
            (
                "logging",
                "metrics",
                "create",
                metric,
                f"--description={description}",
                f'--log-filter=jsonPayload.message="{metric}"',
            ),
            ("logging metrics", metric),
        ),
        Step(
            f"alert on {metric} ({display!r})",
            _g(
                *policies,
                "create",
                f"--display-name={display}",
                *channels,
                f"--condition-display-name={metric} > 0",
                f"--condition-filter={condition}",
                "--if=> 0",
                "--duration=0s",
                '--aggregation={"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_COUNT"}',
                options=o,
            ),
            Look(
                _g(
                    *policies,
                    "list",
                    f'--filter=displayName="{display}"',
                    "--format=value(name)",
                    options=o,
                ),
                not_lines=("",),
            ),
            # ${FOUND}: the policy's name, the look's answer.
            delete=_g(*policies, "delete", "${FOUND}", "--quiet", options=o),
        ),
    ]


def build_command(o: Options) -> Argv:
    """The README's deploy command, for these options: every later deploy runs it too."""
    substitutions = "^;^" + ";".join(f"{k}={v}" for k, v in o.substitutions().items())
    return _g(
        "builds",
        "submit",
        "--config=cloudbuild.yaml",
        "--ignore-file=.gitignore",
        f"--service-account=projects/{o.project}/serviceAccounts/{o.account('deployer')}",
        f"--substitutions={substitutions}",
        options=o,
    )


def doctor_env(o: Options) -> tuple[tuple[str, str], ...]:
    """The deployment's settings, as `doctor` (and `register-webhook`) read them."""
    env = [
        ("STRIPE_SECRET_NAME", STRIPE_SECRET),
        ("STRIPE_WEBHOOK_SECRET_NAME", WEBHOOK_SECRET),
        ("GOOGLE_CLOUD_PROJECT", o.project),
        ("ORDER_LEDGER", "firestore"),
        ("ORDER_EVENTS_TOPIC", f"projects/{o.project}/topics/{ORDER_TOPIC}"),
        ("FRONTEND_URL", o.frontend_url),
        ("DEPLOYMENT_ID", o.deployment_id or o.service),
    ]
    if o.allowed_origins:
        env.append(("ALLOWED_ORIGINS", o.allowed_origins))
    if o.database != "(default)":
        env.append(("FIRESTORE_DATABASE", o.database))
    if o.price_amount:
        env.append(("PRICE_AMOUNT", o.price_amount))
    if o.price_id:
        env.append(("STRIPE_PRICE_ID", o.price_id))
    return tuple(env)


# --- filling in facts, and the shell form the docs show ---

_FACT = re.compile(r"\$\{([A-Z_]+)\}")


def fill(argv: Argv, facts: dict[str, str]) -> Argv:
    """`argv` with each ${NAME} replaced by the fact's value (KeyError if not yet known)."""
    return tuple(_FACT.sub(lambda m: facts[m.group(1)], token) for token in argv)


def shell_word(token: str) -> str:
    """One token as bash would need it typed: ${NAME} left for bash to expand."""
    flag = re.match(r"(--[a-z-]+=)(.*)", token, re.DOTALL)
    if flag:
        return flag.group(1) + shell_word(flag.group(2)) if flag.group(2) else token
    if "$" not in token:
        return shlex.quote(token)
    escaped = re.sub(r'(["\\`])', r"\\\1", token)
    return f'"{escaped}"'


def shell_line(item: Item) -> str:
    """The command as one line of bash, as docs/deploy.md shows it (before wrapping)."""
    if isinstance(item, Fact):
        return f"{item.name}=$({' '.join(shell_word(t) for t in item.argv)})"
    words = [shell_word(t) for t in item.argv]
    if words[0] == "python":
        words[0] = ".venv/bin/python"
    env = " ".join(f"{k}={shell_word(v)}" for k, v in item.env)
    line = " ".join(words)
    if item.stdin_key:
        line = f'printf %s "$STRIPE_KEY" | {line}'
    return f"{env} {line}" if env else line


def describe(plan: Plan) -> str:
    """The plan as JSON (for the record setup keeps and for tests)."""
    return json.dumps([shell_line(item) for item in plan.items], indent=1)


# The docs' names for what a user chooses: docs/deploy.md shows the plan with these.
DOCS_OPTIONS = Options(project="${PROJECT_ID}", region="${REGION}", frontend_url="${FRONTEND_URL}")


def docs_block(plan: Plan, width: int = 100) -> str:
    """The plan as docs/deploy.md shows it: a comment per step, commands wrapped with `\\`."""
    lines: list[str] = []
    number = 0
    for item in plan.items:
        if isinstance(item, Step):
            number += 1
            lines.append(f"# {number}. {item.title}")
        words = shell_line(item).split(" ") if isinstance(item, Fact) else _words(item)
        line = ""
        for word in words:
            if line and len(line) + 1 + len(word) > width - 2:
                lines.append(line + " \\")
                line = "  " + word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "\n".join(lines)


def _words(step: Step) -> list[str]:
    """shell_line's words, without splitting a quoted word at its spaces."""
    words = [shell_word(t) for t in step.argv]
    if words[0] == "python":
        words[0] = ".venv/bin/python"
    prefix = [f"{k}={shell_word(v)}" for k, v in step.env]
    if step.stdin_key:
        prefix = ["printf", "%s", '"$STRIPE_KEY"', "|"]
    return [*prefix, *words]
