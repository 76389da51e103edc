"""Schemathesis against the served OpenAPI document of a real daemon.

Requests generated from the OpenAPI document go to a running ``torro
daemon run``: valid ones and, in schemathesis's negative mode, invalid
ones. No answer may be a server error, and every answer must agree with
the document: a documented status code, its content type, its headers
and a body that fits its schema.

Schemathesis reads the document when the module is collected, before
any daemon runs, so it is built here from the same endpoint
declarations as the daemon's (torro.api.openapi); the first test proves
that the daemon serves exactly that document. (Loading it from a
fixture, ``schemathesis.pytest.from_fixture``, fails on pytest 9, whose
nodes no longer have the ``_nodeid`` that schemathesis 4.32 sets.)

One daemon serves the whole module, with a rate limit out of the way;
forced rotations and resets change its store as they come, and the
last test proves it still runs, healthy, that no reply or log holds a
secret, and reports the count to the campaign's table. The ``campaign``
tests, left out by default (``pytest -m campaign`` runs them), send some
5000 requests.
"""

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import leaks
import pytest
import schemathesis
from api_daemon import FULL_TOKEN, READ_TOKEN, ApiDaemon, start_api
from hypothesis import HealthCheck, given, settings
from runner import FAST_SETTINGS, Torro, clean_environ
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from torro import __version__, licenses
from torro.api.app import DESCRIPTION, TITLE
from torro.api.openapi import build_document
from torro.api.routes import all_endpoints
from torro.manager import iso_time
from torro.material import KeyMaterial

if TYPE_CHECKING:
    import campaign

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Every generated request is sent with each of these tokens.
TOKENS = (FULL_TOKEN, READ_TOKEN, None)
# Examples per operation, each sent once per token, besides the cases
# of schemathesis's coverage phase: some 1100 requests in all by
# default, in about ten seconds, and some 5000 in the campaign.
QUICK_EXAMPLES = 10
CAMPAIGN_EXAMPLES = 150
# Enough requests a minute that 429 stays rare (it is documented).
RATE_LIMIT = "1000000"
DAY = 86400


def _document() -> dict[str, Any]:
    """The document the daemon serves, built from the same declarations.
    """
    document = build_document(
        all_endpoints(),
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
    )
    # as it travels: JSON, with nothing Python-specific left in it
    return json.loads(json.dumps(document))


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
ISSUE = schema["/api/licenses"]["POST"]
VALIDATE = schema["/api/licenses/validate"]["POST"]
SETTINGS = settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiDaemon]:
    """One daemon for the module, its rate limit out of the way."""
    cwd = tmp_path_factory.mktemp("schema") / "work"
    cwd.mkdir()
    runner = Torro(cwd.resolve(), clean_environ(**FAST_SETTINGS))
    try:
        started = start_api(runner, KEY_DAEMON_RATE_LIMIT=RATE_LIMIT)
        try:
            yield started
        finally:
            started.stop()
    finally:
        runner.kill_leftovers()


# What the generated requests got back, for the campaign's table and its
# secrets sweep: the count, and the replies that should hold no secret.
SENT = [0]
REPLIES: list[str] = []
# The operations that answer with a key, to a full token, on purpose.
REVEALING = {"/api/daemon/current-key", "/api/daemon/key/{index}"}


def _note(case: Case, reply: Any) -> None:
    """Count a reply; keep its text unless it may reveal a key."""
    SENT[0] += 1
    if case.operation.path not in REVEALING:
        REPLIES.append(json.dumps(dict(reply.headers)) + reply.text)


def _call_and_validate(case: Case, daemon: ApiDaemon) -> None:
    """Send ``case`` with each of :data:`TOKENS`; check every answer."""
    for token in TOKENS:
        headers = daemon.headers(token) if token else None
        _note(case, case.call_and_validate(
            base_url=daemon.url, headers=headers, checks=CHECKS
        ))


def _assert_healthy(daemon: ApiDaemon, tally: "campaign.Tally") -> None:
    """The daemon still runs and its store still serves; no reply and no
    log holds a secret. Reports the requests sent to the campaign's
    table (each was checked as it was answered)."""
    tally.trials = tally.faults = tally.survived = SENT[0]
    assert SENT[0] > 0, "no generated request ran before this test"
    assert daemon.process.poll() is None, "the daemon exited"
    answer = daemon.get("/api/daemon/status")
    assert answer.status_code == 200, answer.text
    assert answer.json()["healthy"] is True
    assert "unexpected error" not in daemon.log("system.log")
    leaks.sweep(
        tally, texts=REPLIES, logs=daemon.cwd / "logs",
        store=daemon.cwd / "keys",
        master_key_file=daemon.cwd / "keys.master-key",
        tokens=[FULL_TOKEN, READ_TOKEN],
    )


def test_served_document_is_the_one_tested(daemon: ApiDaemon) -> None:
    """The daemon serves, at /openapi.json, the very document the
    generated requests come from."""
    answer = daemon.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == DOCUMENT


@settings(SETTINGS, max_examples=QUICK_EXAMPLES)
@schema.parametrize()
def test_api_conforms(case: Case, daemon: ApiDaemon) -> None:
    """Each operation, with a full, a read-only or no token, answers
    without a server error and as the document says."""
    _call_and_validate(case, daemon)


@pytest.mark.campaign
@settings(SETTINGS, max_examples=CAMPAIGN_EXAMPLES)
@schema.parametrize()
def test_api_conforms_campaign(case: Case, daemon: ApiDaemon) -> None:
    """As test_api_conforms, with many more requests per operation."""
    _call_and_validate(case, daemon)


class _OneKeyRing:
    """A key ring of one key: what the daemon's current key signs with.
    """

    def __init__(self, index: int, algorithm: str) -> None:
        self.index = index
        self.algorithm = algorithm

    def current_index(self) -> int:
        return self.index

    def key(self, index: int) -> tuple[KeyMaterial, str]:
        return KeyMaterial(bytes(32)), self.algorithm

    def retained(self) -> list[int]:
        return [self.index]

    def is_retired(self, index: int) -> bool:
        return False


def _issuable(body: dict[str, Any], current: dict[str, Any]) -> bool:
    """Tell whether torro.licenses issues the license ``body`` asks for,
    with a key like the daemon's current one."""
    ring = _OneKeyRing(current["index"], current["algorithm"])
    try:
        licenses.issue_license(
            ring,
            subject=body["subject"],
            expires=body["expires"],
            features=body.get("features", []),
            offline=body.get("offline", False),
            not_before=body.get("not_before"),
        )
    except (TypeError, ValueError):
        return False
    return True


def _later(case: Case) -> Case:
    """Move the expiry of a generated license request a day or more
    ahead, and its start a day or more from now, so that the clock
    decides nothing."""
    if isinstance(case.body, dict):
        now = int(time.time())
        case.body["expires"] = min(
            max(case.body["expires"], now + DAY), licenses.MAX_TIME
        )
        not_before = case.body.get("not_before")
        if not_before is not None and abs(not_before - now) < DAY:
            case.body["not_before"] = now - DAY
    return case


def _check_issued(case: Case, daemon: ApiDaemon) -> None:
    """Issue the license ``case`` asks for, then validate it."""
    answer = daemon.get("/api/daemon/current-key", FULL_TOKEN)
    assert answer.status_code == 200, answer.text
    current = answer.json()
    body = case.body
    issued = case.call_and_validate(
        base_url=daemon.url, headers=daemon.headers(), checks=CHECKS
    )
    _note(case, issued)
    if not _issuable(body, current):
        assert issued.status_code in (413, 422), issued.text
        return
    assert issued.status_code == 200, issued.text
    offline = body.get("offline", False)
    expires = iso_time(body["expires"] * 1000)
    assert issued.json() == {
        "license": issued.json()["license"],
        "kid": current["index"],
        "algorithm": "EdDSA" if offline
        else licenses.hmac_algorithm(current["algorithm"]),
        "offline": offline,
        "expires": expires,
    }
    check = VALIDATE.Case(body={"license": issued.json()["license"]})
    checked = check.call_and_validate(base_url=daemon.url, checks=CHECKS)
    _note(check, checked)
    not_before = body.get("not_before")
    if not_before is not None and not_before > time.time():
        assert checked.json()["reason"] == "not_yet_valid"
        return
    assert checked.json() == {
        "valid": True,
        "reason": None,
        "detail": None,
        "kid": current["index"],
        "subject": body["subject"],
        "expires": expires,
        "features": body.get("features", []),
        "offline": offline,
    }


@settings(SETTINGS, max_examples=QUICK_EXAMPLES * 3)
@given(case=ISSUE.as_strategy().map(_later))
def test_issued_licenses_conform_and_validate(
    case: Case, daemon: ApiDaemon
) -> None:
    """Valid license requests, with the full token: the API issues a
    license exactly when torro.licenses would (printable text, times in
    order, short enough), the reply fits the document, and the license
    validates with the subject, features and expiry asked for."""
    _check_issued(case, daemon)


@pytest.mark.campaign
@settings(SETTINGS, max_examples=CAMPAIGN_EXAMPLES * 2)
@given(case=ISSUE.as_strategy().map(_later))
def test_issued_licenses_campaign(case: Case, daemon: ApiDaemon) -> None:
    """As test_issued_licenses_conform_and_validate, with more licenses.
    """
    _check_issued(case, daemon)


@pytest.mark.scenario("hostile input: generated requests")
def test_daemon_survives(daemon: ApiDaemon, tally: "campaign.Tally") -> None:
    """After every generated request, resets included, the daemon runs,
    is healthy and logged no unexpected error."""
    _assert_healthy(daemon, tally)


@pytest.mark.campaign
@pytest.mark.scenario("hostile input: generated requests")
def test_daemon_survives_campaign(
    daemon: ApiDaemon, tally: "campaign.Tally"
) -> None:
    """As test_daemon_survives, after the campaign."""
    _assert_healthy(daemon, tally)
