"""Licenses across rotations, end to end, against a real daemon.

The spec: licenses issued before three rotations verify after them,
through the CLI, through the API and through PyJWT with the JWKS; after
pruning they fail with ``key_retired``. Licenses are issued through the
API and through ``torro license issue``, by HMAC and offline (EdDSA),
and each is checked three ways: ``torro license verify --json`` in the
daemon's directory, ``POST /api/licenses/validate``, and PyJWT alone,
with the JWK Set the daemon publishes (offline licenses) or the key it
reveals to a full token (HMAC licenses).

Then every failure reason through the API, and the issue endpoint's
refusals: 422 for bad input, 401 and 403 for the caller.
"""

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from api_daemon import FULL_TOKEN, READ_TOKEN, ApiDaemon

from torro.manager import iso_time

# A retention of four keys: the current one and the three before it.
RETENTION = 4
# 2099-01-01T00:00:00Z, as the CLI reads --expires 2099-01-01.
EXPIRES = 4_070_908_800
EXPIRES_ISO = iso_time(EXPIRES * 1000)
HOUR = 3600


# -- helpers ---------------------------------------------------------------

def _current_index(api: ApiDaemon) -> int:
    """The current key's index, as status and current-key report it."""
    status = api.get("/api/daemon/status")
    assert status.status_code == 200, status.text
    current = api.get("/api/daemon/current-key", FULL_TOKEN)
    assert current.status_code == 200, current.text
    index = status.json()["current_index"]
    assert current.json()["index"] == index
    return index


def _rotate(api: ApiDaemon) -> int:
    """Force a rotation; return the new current index."""
    before = _current_index(api)
    answer = api.post("/api/daemon/force-rotation", FULL_TOKEN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["index"] == before + 1
    assert _current_index(api) == before + 1
    return before + 1


def _issue_api(
    api: ApiDaemon,
    subject: str,
    features: list[str],
    offline: bool,
    **fields: Any,
) -> str:
    """Issue a license through POST /api/licenses; return it."""
    kid = _current_index(api)
    body = {
        "subject": subject,
        "expires": EXPIRES,
        "features": features,
        "offline": offline,
        **fields,
    }
    answer = api.post("/api/licenses", FULL_TOKEN, json=body)
    assert answer.status_code == 200, answer.text
    issued = answer.json()
    token = issued["license"]
    assert issued == {
        "license": token,
        "kid": kid,
        "algorithm": "EdDSA" if offline else "HS256",
        "offline": offline,
        "expires": EXPIRES_ISO,
    }
    return token


def _issue_cli(
    api: ApiDaemon, subject: str, features: list[str], offline: bool
) -> str:
    """Issue a license through ``torro license issue``; return it."""
    args = ["license", "issue", "--subject", subject,
            "--expires", "2099-01-01"]
    for feature in features:
        args += ["--feature", feature]
    if offline:
        args.append("--offline")
    done = api.torro.run(*args, env=_cli_env())
    assert done.code == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    return token


def _cli_env() -> dict[str, str | None]:
    """The CLI's settings: the daemon's retention, same default store."""
    return {"KEY_DAEMON_MAX_HISTORY": str(RETENTION)}


def _verify_cli(api: ApiDaemon, token: str) -> tuple[int, dict[str, Any]]:
    """``torro license verify TOKEN --json``: exit code and JSON."""
    return _verify_cli_all(api, [token])[0]


def _verify_cli_all(
    api: ApiDaemon, tokens: list[str]
) -> list[tuple[int, dict[str, Any]]]:
    """``torro license verify TOKEN --json`` of each token, run at once.
    """
    done = api.torro.run_together(
        *(("license", "verify", token, "--json") for token in tokens),
        env=_cli_env(),
    )
    return [(each.code, json.loads(each.stdout)) for each in done]


def _validate(api: ApiDaemon, token: Any) -> dict[str, Any]:
    """POST /api/licenses/validate, public: the reply's JSON."""
    answer = api.post("/api/licenses/validate", json={"license": token})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _valid(
    kid: int, subject: str, features: list[str], offline: bool,
    expires: int = EXPIRES,
) -> dict[str, Any]:
    """What validate (and verify --json) says of a valid license."""
    return {
        "valid": True,
        "reason": None,
        "detail": None,
        "kid": kid,
        "subject": subject,
        "expires": iso_time(expires * 1000),
        "features": features,
        "offline": offline,
    }


def _invalid(reason: str, detail: str, kid: int | None) -> dict[str, Any]:
    """What validate (and verify --json) says of an invalid license."""
    return {
        "valid": False,
        "reason": reason,
        "detail": detail,
        "kid": kid,
        "subject": None,
        "expires": None,
        "features": None,
        "offline": None,
    }


def _jwks_client(api: ApiDaemon) -> jwt.PyJWKClient:
    """A new PyJWT JWKS client (nothing cached) of the daemon's JWKS."""
    return jwt.PyJWKClient(
        f"{api.url}/.well-known/jwks.json", cache_jwk_set=False
    )


def _decode_offline(api: ApiDaemon, token: str) -> dict[str, Any]:
    """Verify an offline license with PyJWT and the published JWKS."""
    key = _jwks_client(api).get_signing_key_from_jwt(token)
    return jwt.decode(
        token, key.key, algorithms=["EdDSA"], issuer="torro",
        options={"require": ["exp", "nbf", "iat", "iss", "sub"]},
    )


def _revealed_key(api: ApiDaemon, index: int) -> bytes:
    """The key ``index`` itself, as GET key/{index} reveals it."""
    answer = api.get(f"/api/daemon/key/{index}", FULL_TOKEN)
    assert answer.status_code == 200, answer.text
    return bytes.fromhex(answer.json()["key"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(
    claims: dict[str, Any], key: bytes, kid: Any, algorithm: str = "HS256"
) -> str:
    """A license made by PyJWT alone, with a key the daemon revealed."""
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _claims(**changes: Any) -> dict[str, Any]:
    """Claims of a license valid now, with ``changes``."""
    now = int(time.time())
    claims = {
        "iss": "torro",
        "sub": "forged-by-pyjwt",
        "iat": now,
        "nbf": now,
        "exp": now + HOUR,
        "features": ["pro"],
    }
    claims.update(changes)
    return claims


# -- licenses across rotations ---------------------------------------------

def test_licenses_verify_after_three_rotations_then_retire(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """HMAC and offline licenses, from the API and the CLI, verify after
    three rotations through the CLI, the API and PyJWT; one rotation
    more prunes their key and every path says key_retired, while a
    license of the next key still verifies until its own key goes."""
    api = api_factory(KEY_DAEMON_MAX_HISTORY=str(RETENTION))
    first = _current_index(api)
    started = int(time.time())
    issued = {
        # name: (subject, features, offline)
        "api-hmac": ("api-hmac", ["pro", "support"], False),
        "api-offline": ("api-offline", ["edge"], True),
        "cli-hmac": ("cli-hmac", ["pro"], False),
        "cli-offline": ("cli-offline", ["edge", "pro"], True),
    }
    tokens = {
        name: (_issue_cli if name.startswith("cli") else _issue_api)(
            api, subject, features, offline
        )
        for name, (subject, features, offline) in issued.items()
    }
    for name, token in tokens.items():
        offline = issued[name][2]
        assert jwt.get_unverified_header(token) == {
            "alg": "EdDSA" if offline else "HS256",
            "kid": str(first),
            "typ": "JWT",
        }
    ended = int(time.time())
    hmac_key = _revealed_key(api, first)

    assert _rotate(api) == first + 1
    later = _issue_api(api, "after-one-rotation", ["late"], True)
    assert _rotate(api) == first + 2
    assert _rotate(api) == first + 3

    # three rotations on: every path still verifies them
    jwks = api.get("/.well-known/jwks.json").json()
    assert [key["kid"] for key in jwks["keys"]] == [
        str(index) for index in range(first, first + RETENTION)
    ]
    verified = dict(zip(
        tokens, _verify_cli_all(api, [*tokens.values()]), strict=True
    ))
    for name, token in tokens.items():
        subject, features, offline = issued[name]
        expected = _valid(first, subject, features, offline)
        assert verified[name] == (0, expected), name
        assert _validate(api, token) == expected, name
        if offline:
            claims = _decode_offline(api, token)
        else:
            claims = jwt.decode(
                token, hmac_key, algorithms=["HS256"], issuer="torro"
            )
        assert started <= claims["iat"] <= ended, name
        assert claims == {
            "iss": "torro",
            "sub": subject,
            "iat": claims["iat"],
            "nbf": claims["iat"],
            "exp": EXPIRES,
            "features": features,
        }, name

    # the fourth rotation prunes the key that signed them
    assert _rotate(api) == first + 4
    retired = _invalid(
        "key_retired", f"key {first} is no longer retained", first
    )
    verified = dict(zip(
        tokens, _verify_cli_all(api, [*tokens.values()]), strict=True
    ))
    for name, token in tokens.items():
        assert verified[name] == (1, retired), name
        assert _validate(api, token) == retired, name
        if issued[name][2]:
            with pytest.raises(jwt.PyJWKClientError, match="Unable to find"):
                _jwks_client(api).get_signing_key_from_jwt(token)
    text = api.torro.run("license", "verify", tokens["cli-hmac"],
                         env=_cli_env())
    assert text.code == 1
    assert f"license invalid (key_retired): key {first} is no longer " \
        "retained" in text.stderr
    jwks = api.get("/.well-known/jwks.json").json()
    assert str(first) not in [key["kid"] for key in jwks["keys"]]
    gone = api.get(f"/api/daemon/key/{first}", FULL_TOKEN)
    assert gone.status_code == 404

    # retention counts keys: the next key's license lives one more
    late = _valid(first + 1, "after-one-rotation", ["late"], True)
    assert _verify_cli(api, later) == (0, late)
    assert _validate(api, later) == late
    assert _decode_offline(api, later)["sub"] == "after-one-rotation"
    assert _rotate(api) == first + 5
    late_retired = _invalid(
        "key_retired", f"key {first + 1} is no longer retained", first + 1
    )
    assert _verify_cli(api, later) == (1, late_retired)
    assert _validate(api, later) == late_retired


# -- every failure reason through the API ----------------------------------

def _failures(api: ApiDaemon) -> dict[str, tuple[Any, dict[str, Any]]]:
    """A license failing for each reason, and what validate must say."""
    kid = _current_index(api)
    key = _revealed_key(api, kid)
    now = int(time.time())
    good = _issue_api(api, "tampered", ["pro"], False)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["features"] = ["pro", "everything"]
    tampered = ".".join([
        header,
        _b64(json.dumps(claims, separators=(",", ":")).encode()),
        signature,
    ])
    offline = _issue_api(api, "resigned", [], True)
    header, payload, _ = offline.split(".")
    # the offline license, with the signature of another one
    other = _issue_api(api, "other", [], True)
    swapped = ".".join([header, payload, other.split(".")[2]])
    future = now + 10 * HOUR
    not_yet = _issue_api(
        api, "not-yet", ["pro"], False, not_before=future
    )
    expired_at = now - HOUR
    expired = _sign(
        _claims(iat=now - 2 * HOUR, nbf=now - 2 * HOUR, exp=expired_at),
        key, str(kid),
    )
    never = kid + 1000
    return {
        "bad_signature_claims": (tampered, _invalid(
            "bad_signature", f"not signed by key {kid}", kid)),
        "bad_signature_offline": (swapped, _invalid(
            "bad_signature", f"not signed by key {kid}", kid)),
        "bad_signature_other_key": (
            _sign(_claims(), b"k" * 32, str(kid)),
            _invalid("bad_signature", f"not signed by key {kid}", kid),
        ),
        "expired": (expired, _invalid(
            "expired", f"expired at {_iso(expired_at)}", kid)),
        "not_yet_valid": (not_yet, _invalid(
            "not_yet_valid", f"valid from {_iso(future)}", kid)),
        "malformed_text": ("not-a-license", _invalid(
            "malformed", "not a JWS compact token", None)),
        "malformed_empty": ("", _invalid(
            "malformed", "not a JWS compact token", None)),
        "malformed_kid": (_sign(_claims(), key, f"00{kid}"), _invalid(
            "malformed", "kid is not a key index in decimal", None)),
        "malformed_no_kid": (_sign(_claims(), key, None), _invalid(
            "malformed", "the header names no key (kid)", None)),
        "malformed_claims": (_sign(_claims(iss="elsewhere"), key,
                                   str(kid)), _invalid(
            "malformed", "not issued by torro (iss)", kid)),
        "unknown_kid": (_sign(_claims(), key, str(never)), _invalid(
            "unknown_kid", f"the key ring never had key {never}", never)),
        "wrong_algorithm": (
            _sign(_claims(), key * 2, str(kid), "HS512"),
            _invalid(
                "wrong_algorithm",
                f"key {kid} signs HS256 or EdDSA licenses, not alg HS512",
                kid,
            ),
        ),
    }


def _iso(seconds: int) -> str:
    """A time as license failure details write it (whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def test_each_failure_reason_through_the_api(api: ApiDaemon) -> None:
    """validate answers 200 with the one reason each bad license fails
    for (bad_signature, expired, not_yet_valid, malformed, unknown_kid,
    wrong_algorithm), its detail and key index, and nothing of what the
    license claims; the CLI says the same."""
    failures = _failures(api)
    verified = _verify_cli_all(api, [token for token, _ in failures.values()])
    for (name, (token, expected)), by_cli in zip(
        failures.items(), verified, strict=True
    ):
        assert _validate(api, token) == expected, name
        assert by_cli == (1, expected), name


def test_validate_refuses_a_body_that_is_no_license(api: ApiDaemon) -> None:
    """A license that is not a string, a missing license and an extra
    field are 422 invalid_request, not a verdict on a license."""
    for body in ({"license": 42}, {"license": None}, {},
                 {"license": "a.b.c", "extra": 1}):
        answer = api.post("/api/licenses/validate", json=body)
        assert answer.status_code == 422, body
        assert answer.json()["error"]["code"] == "invalid_request"


# -- the issue endpoint's refusals -----------------------------------------

# Requests POST /api/licenses refuses with 422, by what is wrong.
BAD_ISSUE_BODIES: dict[str, Any] = {
    "expires-before-not-before": {
        "subject": "acme", "expires": 2_000_000_000,
        "not_before": 2_000_000_001,
    },
    "expires-at-not-before": {
        "subject": "acme", "expires": 2_000_000_000,
        "not_before": 2_000_000_000,
    },
    "expires-in-the-past": {"subject": "acme", "expires": 1_000_000_000},
    "expires-negative": {"subject": "acme", "expires": -1},
    "expires-after-9999": {"subject": "acme", "expires": 10**12},
    "subject-int": {"subject": 42, "expires": EXPIRES},
    "subject-empty": {"subject": "", "expires": EXPIRES},
    "subject-line-break": {"subject": "a\nb", "expires": EXPIRES},
    "expires-str": {"subject": "acme", "expires": "2099-01-01"},
    "expires-float": {"subject": "acme", "expires": float(EXPIRES)},
    "expires-bool": {"subject": "acme", "expires": True},
    "features-str": {"subject": "acme", "expires": EXPIRES,
                     "features": "pro"},
    "feature-int": {"subject": "acme", "expires": EXPIRES,
                    "features": [1]},
    "feature-empty": {"subject": "acme", "expires": EXPIRES,
                      "features": [""]},
    "offline-str": {"subject": "acme", "expires": EXPIRES,
                    "offline": "yes"},
    "not-before-str": {"subject": "acme", "expires": EXPIRES,
                       "not_before": "now"},
    "no-subject": {"expires": EXPIRES},
    "no-expires": {"subject": "acme"},
    "extra-field": {"subject": "acme", "expires": EXPIRES, "kid": 0},
    "not-an-object": ["acme", EXPIRES],
}


def test_issue_refuses_bad_input(
    api: ApiDaemon, subtests: pytest.Subtests
) -> None:
    """POST /api/licenses answers 422 invalid_request to each request of
    :data:`BAD_ISSUE_BODIES`: wrong types, out of range, expiring before
    it starts; and no license is issued."""
    for name, body in BAD_ISSUE_BODIES.items():
        with subtests.test(msg=name):
            answer = api.post("/api/licenses", FULL_TOKEN, json=body)
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["code"] == "invalid_request"
            assert error["message"]
    assert "license issued" not in api.log("security.log")


def test_issue_needs_a_full_token(api: ApiDaemon) -> None:
    """Without a token POST /api/licenses is 401, with the read-only or
    an unknown token 403; none issues a license."""
    body = {"subject": "acme", "expires": EXPIRES}
    anonymous = api.post("/api/licenses", json=body)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["code"] == "unauthorized"
    for token in (READ_TOKEN, "not-a-token-of-this-daemon-0123456789"):
        refused = api.post("/api/licenses", token, json=body)
        assert refused.status_code == 403, token
        assert refused.json()["error"]["code"] == "forbidden"
        assert "license" not in refused.json()
    assert "license issued" not in api.log("security.log")
    # the full token issues it
    assert _issue_api(api, "acme", [], False)
    assert "license issued for subject 'acme'" in api.log("security.log")
