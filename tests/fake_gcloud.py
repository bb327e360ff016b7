"""A stand-in `gcloud` for setup's tests: records each call, answers from a JSON state file.

It knows the commands `python -m checkout setup | teardown` run (the real gcloud parses the same
commands in test_setup_gcloud.py) and keeps what they make: resources, IAM policies, enabled
APIs. Like Google Cloud it refuses to make what exists, to bind a role on what does not, or to
name a service account that does not exist, so a step out of order fails here too. State:
FAKE_GCLOUD_STATE; `fail_at` N in it makes the Nth changing call of a run fail (quota), unmade.
Secrets go to the Secret Manager fake when FAKE_SM_URL is set.

`gcloud` on PATH is a bash script (`shim`) that hands its arguments, standard input and those two
variables to a `Server` in the test's process, and prints what it answers: setup still runs a
process per call, as with the real CLI, but a bash one (about 2 ms of CPU) rather than a Python
one that imports this module (about 30 ms), which mattered for the ~1,500 calls of the test that
stops setup at each step in turn.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
import urllib.request
from types import TracebackType
from typing import Any

PROJECT_NUMBER = "123456789012"
CHANGING = {
    "create",
    "deploy",
    "enable",
    "update",
    "delete",
    "rm",
    "add-iam-policy-binding",
    "remove-iam-policy-binding",
    "submit",
}
VERBS = CHANGING | {"describe", "list", "get-iam-policy"}


def default_build_account(project: str) -> str:
    del project
    return f"{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"


def initial_state(project: str) -> dict[str, Any]:
    """A new project: billing on, nothing enabled, Google's default build account only."""
    account = default_build_account(project)
    return {
        "resources": {f"iam service-accounts/{account}": {"email": account}},
        "policies": {},
        "apis": [],
        "calls": [],
        "changes": 0,
        "fail_at": None,
    }


class Failed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def call(argv: list[str], stdin: str, state_path: str, sm_url: str) -> tuple[int, str, str]:
    """One `gcloud ARGV` against the state file: (exit status, stdout, stderr)."""
    with open(state_path) as file:
        state = json.load(file)
    state["calls"].append(argv)
    stdout = stderr = ""
    try:
        output = answer(state, argv, Call(stdin, sm_url))
    except Failed as error:
        command = ".".join(w for w in words_of(argv)[:3])
        stderr = f"ERROR: (gcloud.{command}) {error}\n"
        code = error.code
    else:
        if output is not None:
            stdout = output if output.endswith("\n") else output + "\n"
        code = 0
    with open(state_path, "w") as file:
        json.dump(state, file, indent=1, sort_keys=True)
    return code, stdout, stderr


class Call:
    """What a call brings besides its arguments: its standard input, the Secret Manager fake."""

    def __init__(self, stdin: str, sm_url: str) -> None:
        self.stdin = stdin
        self.sm_url = sm_url


# The bash `gcloud`: NUL-separated fields (state file, Secret Manager URL, argc, argv..., stdin)
# to the server; back "STATUS OUT_BYTES ERR_BYTES\n", then stdout's bytes and stderr's. bash's
# builtins only (read, printf, /dev/tcp): no process starts besides bash itself.
SHIM = """#!/bin/bash
export LC_ALL=C
{guard}exec 3<>/dev/tcp/127.0.0.1/{port} || exit 3
IFS= read -r -d '' input
printf '%s\\0' "$FAKE_GCLOUD_STATE" "${{FAKE_SM_URL-}}" "$#" "$@" "$input" >&3
IFS=' ' read -r status out_bytes err_bytes <&3 || exit 3
out= err=
if [ "$out_bytes" -gt 0 ]; then IFS= read -r -d '' -N "$out_bytes" out <&3; fi
if [ "$err_bytes" -gt 0 ]; then IFS= read -r -d '' -N "$err_bytes" err <&3; fi
printf '%s' "$out"
printf '%s' "$err" >&2
exit "$status"
"""


def shim(port: int, guard: str = "") -> str:
    """The bash `gcloud` for a server on `port`; `guard`, bash run first (a test's own answer)."""
    return SHIM.format(port=port, guard=guard)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        fields: list[bytes] = []
        buffer = b""
        while len(fields) < 3 or len(fields) < 4 + int(fields[2]):
            chunk = self.rfile.read1(65536)
            if not chunk:
                return
            *done, buffer = (buffer + chunk).split(b"\0")
            fields += done
        state_path, sm_url, _, *argv = (f.decode() for f in fields)
        stdin = argv.pop()
        code, out, err = call(argv, stdin, state_path, sm_url)
        out_bytes, err_bytes = out.encode(), err.encode()
        head = f"{code} {len(out_bytes)} {len(err_bytes)}\n".encode()
        self.wfile.write(head + out_bytes + err_bytes)


class Server:
    """The stand-in's answers, from a thread of the test's process; one call at a time."""

    def __init__(self) -> None:
        self._server = socketserver.TCPServer(("127.0.0.1", 0), _Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def words_of(argv: list[str]) -> list[str]:
    return [token for token in argv if not token.startswith("--")]


def flags_of(argv: list[str]) -> dict[str, str]:
    flags = {}
    for token in argv:
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            flags[name] = value
    return flags


def answer(state: dict[str, Any], argv: list[str], this: Call) -> str | None:
    words, flags = words_of(argv), flags_of(argv)
    project = flags.get("project", "")
    fmt = flags.get("format")
    if words[:2] == ["auth", "list"]:
        return "me@example.com"
    if words[:3] == ["auth", "application-default", "print-access-token"]:
        return "stand-in-token"
    if words[:2] == ["projects", "describe"]:
        return formatted({"projectId": words[2], "projectNumber": PROJECT_NUMBER}, fmt)
    if words[:3] == ["billing", "projects", "describe"]:
        return formatted({"billingEnabled": True}, fmt)
    if words[:2] == ["builds", "get-default-service-account"]:
        email = default_build_account(project)
        return formatted(
            {"serviceAccountEmail": f"projects/{project}/serviceAccounts/{email}"}, fmt
        )
    verb_at = next(i for i, w in enumerate(words) if w in VERBS)
    group, verb = words[:verb_at], words[verb_at]
    if verb in CHANGING:
        state["changes"] += 1
        if state["changes"] == state.get("fail_at"):
            raise Failed("RESOURCE_EXHAUSTED: Quota exceeded (the stand-in's failure)")
    if group == ["services"]:
        if verb == "enable":
            state["apis"] = sorted(set(state["apis"]) | set(words[verb_at + 1 :]))
            return None
        return "\n".join(state["apis"])
    if group == ["builds"] and verb == "submit":
        return build(state, flags, project, this)
    name, group = resource_name(group, verb, words[verb_at + 1 :], flags, project)
    key = f"{' '.join(group)}/{name}"
    resources, policies = state["resources"], state["policies"]
    if verb in ("add-iam-policy-binding", "remove-iam-policy-binding", "get-iam-policy"):
        if group != ["projects"] and key not in resources:
            raise Failed(f"NOT_FOUND: {key} not found")
        bindings = policies.setdefault(key, [])
        if verb == "get-iam-policy":
            return json.dumps({"bindings": bindings, "etag": "BwX"})
        member, role = flags["member"], flags["role"]
        found = [b for b in bindings if b["role"] == role and member in b["members"]]
        if verb == "remove-iam-policy-binding":
            if not found:
                raise Failed("NOT_FOUND: Policy binding with the specified principal not found")
            found[0]["members"].remove(member)
            policies[key] = [b for b in bindings if b["members"]]
            return None
        check_member(state, member, project)
        if not found:
            binding: dict[str, Any] = {"role": role, "members": [member]}
            condition = flags.get("condition", "None")
            if condition != "None":
                binding["condition"] = dict(re.findall(r'(\w+)=((?:"[^"]*"|[^,])*)', condition))
            bindings.append(binding)
        return None
    if verb == "list":
        return listed(state, group, key, flags)
    if verb == "describe":
        if key not in resources:
            raise Failed(f"NOT_FOUND: Resource not found: {key}")
        return formatted(resources[key], fmt)
    if verb == "delete" and group == ["alpha", "monitoring", "policies"]:
        key = next((k for k, v in resources.items() if v.get("name") == name), key)
    if verb in ("delete", "rm"):
        if key not in resources:
            raise Failed(f"NOT_FOUND: Resource not found: {key}")
        del resources[key]
        policies.pop(key, None)
        if group == ["firestore", "databases"]:  # its TTL settings go with it
            for field in [k for k in resources if k.startswith(f"firestore fields ttls/{name}/")]:
                del resources[field]
        if group == ["eventarc", "triggers"]:
            subscription = f"pubsub subscriptions/eventarc-{flags['location']}-{name}-sub-001"
            resources.pop(subscription, None)
            policies.pop(subscription, None)
        return None
    if verb == "update" and group[:3] == ["firestore", "fields", "ttls"]:
        if f"firestore databases/{flags.get('database', '(default)')}" not in resources:
            raise Failed("NOT_FOUND: the database does not exist")
        resources[key] = {"ttlConfig": {"state": "CREATING"}}
        return None
    if verb == "update":
        if key not in resources:
            raise Failed(f"NOT_FOUND: Resource not found: {key}")
        updated(state, resources[key], group, flags)
        return None
    # create, deploy
    if key in resources and verb == "create":
        raise Failed(f"ALREADY_EXISTS: {key} already exists", code=1)
    resources[key] = created(state, group, name, flags, project, this)
    return None


def resource_name(
    group: list[str], verb: str, rest: list[str], flags: dict[str, str], project: str
) -> tuple[str, list[str]]:
    """(name, group) of the resource a command names, as this fake keys it."""
    if group == ["run"] and verb == "deploy":
        return rest[0], ["run", "services"]
    if group == ["storage"] and verb == "rm":
        return rest[0], ["storage", "buckets"]
    if group[:2] == ["firestore", "databases"]:
        return flags.get("database", "(default)"), group
    if group[:3] == ["firestore", "fields", "ttls"]:
        field = rest[0] if rest else "expire_at"
        database = flags.get("database", "(default)")
        return f"{database}/{flags['collection-group']}/{field}", group
    if group == ["scheduler", "jobs"] and verb == "create":
        return rest[1], group
    if group == ["alpha", "monitoring", "policies"]:
        if verb == "create":
            return flags["display-name"], group
        return (rest[0] if rest else ""), group
    if group == ["iam", "service-accounts"] and verb == "create":
        return f"{rest[0]}@{project}.iam.gserviceaccount.com", group
    name = rest[0] if rest else ""
    if group == ["pubsub", "subscriptions"]:
        name = name.rsplit("/", 1)[-1]
    return name, group


def check_member(state: dict[str, Any], member: str, project: str) -> None:
    kind, _, email = member.partition(":")
    if kind != "serviceAccount":
        return
    ours = email.endswith(f"@{project}.iam.gserviceaccount.com") or email.endswith(
        "developer.gserviceaccount.com"
    )
    if ours and f"iam service-accounts/{email}" not in state["resources"]:
        raise Failed(f"INVALID_ARGUMENT: Service account {email} does not exist.")
    if "@gcp-sa-pubsub." in email and not email.startswith(f"service-{PROJECT_NUMBER}@"):
        raise Failed(f"INVALID_ARGUMENT: Service account {email} does not exist.")


def created(
    state: dict[str, Any],
    group: list[str],
    name: str,
    flags: dict[str, str],
    project: str,
    this: Call,
) -> dict[str, Any]:
    resources = state["resources"]
    if group == ["firestore", "databases"]:
        return {
            "name": f"projects/{project}/databases/{name}",
            "locationId": flags["location"],
            "type": "FIRESTORE_NATIVE",
        }
    if group == ["run", "services"]:
        region = flags["region"]
        image = flags.get("image", "built")
        return {
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"image": image}]}}},
            "status": {"url": f"https://{name}-{PROJECT_NUMBER}.{region}.run.app"},
        }
    if group == ["pubsub", "subscriptions"]:
        if f"pubsub topics/{flags['topic']}" not in resources:
            raise Failed(f"NOT_FOUND: Resource not found (resource={flags['topic']}).")
        return {"name": f"projects/{project}/subscriptions/{name}", "ackDeadlineSeconds": 10}
    if group == ["eventarc", "triggers"]:
        if f"run services/{flags['destination-run-service']}" not in resources:
            raise Failed("NOT_FOUND: the destination Cloud Run service does not exist")
        check_member(state, f"serviceAccount:{flags['service-account']}", project)
        subscription = f"eventarc-{flags['location']}-{name}-sub-001"
        resources[f"pubsub subscriptions/{subscription}"] = {
            "name": f"projects/{project}/subscriptions/{subscription}",
            "ackDeadlineSeconds": 10,
        }
        return {
            "transport": {
                "pubsub": {"subscription": f"projects/{project}/subscriptions/{subscription}"}
            }
        }
    if group == ["secrets"]:
        value = this.stdin if flags.get("data-file") == "-" else None
        store_secret(this.sm_url, project, name, value)
        return {"name": f"projects/{project}/secrets/{name}"}
    if group == ["alpha", "monitoring", "policies"]:
        return {"name": f"projects/{project}/alertPolicies/{len(resources)}", "displayName": name}
    if group == ["iam", "service-accounts"]:
        return {"email": name}
    return {"name": name, "flags": {k: v for k, v in flags.items() if k != "project"}}


def updated(
    state: dict[str, Any], resource: dict[str, Any], group: list[str], flags: dict[str, str]
) -> None:
    if group == ["pubsub", "subscriptions"]:
        topic = flags.get("dead-letter-topic")
        if topic and f"pubsub topics/{topic.rsplit('/', 1)[-1]}" not in state["resources"]:
            raise Failed(f"NOT_FOUND: dead-letter topic {topic} not found")
        resource["deadLetterPolicy"] = {
            "deadLetterTopic": topic,
            "maxDeliveryAttempts": int(flags["max-delivery-attempts"]),
        }
        resource["ackDeadlineSeconds"] = int(flags["ack-deadline"])


def build(state: dict[str, Any], flags: dict[str, str], project: str, this: Call) -> str:
    values = flags["substitutions"]
    delimiter = ","
    escaped = re.fullmatch(r"\^([^^]+)\^(.*)", values, re.DOTALL)
    if escaped:
        delimiter, values = escaped.groups()
    subs = dict(item.split("=", 1) for item in values.split(delimiter))
    region = subs.get("_REGION", "us-central1")
    built = f"{region}-docker.pkg.dev/{project}/cloud-run-source-deploy/built"
    for key in ("_WORKER_SERVICE", "_SERVICE"):
        name = subs.get(key, {"_SERVICE": "checkout-api"}.get(key, "checkout-worker"))
        state["resources"][f"run services/{name}"] = created(
            state, ["run", "services"], name, {"region": region, "image": built}, project, this
        )
    job = subs.get("_RECONCILE_JOB", "checkout-reconcile")
    state["resources"][f"run jobs/{job}"] = {"name": job, "image": built}
    return "DONE"


def listed(state: dict[str, Any], group: list[str], key: str, flags: dict[str, str]) -> str:
    resources = state["resources"]
    if group == ["alpha", "monitoring", "policies"]:
        (display,) = re.findall(r'displayName="([^"]*)"', flags.get("filter", ""))
        found = resources.get(f"alpha monitoring policies/{display}")
        return found["name"] if found else ""
    if group[:3] == ["firestore", "fields", "ttls"]:
        return "expire_at" if key in resources else ""
    raise Failed(f"the stand-in cannot list {group}", code=2)


def formatted(data: dict[str, Any], fmt: str | None) -> str:
    if not fmt or fmt == "json":
        return json.dumps(data)
    value_of = re.fullmatch(r"value\((.*)\)", fmt)
    if value_of is None:
        raise Failed(f"the stand-in cannot format {fmt}", code=2)
    path = value_of.group(1)
    basename = path.endswith(".basename()")
    value: Any = data
    for part in path.removesuffix(".basename()").split("."):
        index = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        if index:
            value = (value or {}).get(index.group(1), [])
            value = value[int(index.group(2))] if len(value) > int(index.group(2)) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    text = "" if value is None else str(value)
    return text.rsplit("/", 1)[-1] if basename else text


def store_secret(url: str, project: str, secret: str, value: str | None) -> None:
    if not url:
        return
    body = {"project": project, "secret": secret}
    if value is not None:
        body["value"] = value
    request = urllib.request.Request(
        f"{url}/_emulator/secrets",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
