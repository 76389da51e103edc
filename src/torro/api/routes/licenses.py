"""Licenses over HTTP: issue, validate, and the public keys to verify
offline.

- ``POST /api/licenses`` (full admin token) issues a license signed with
  the current key (see torro.licenses): by HMAC, or by EdDSA with
  ``"offline": true``.
- ``POST /api/licenses/validate`` (public, rate limited per client
  address) checks a license against the retained keys and answers 200
  either way: ``valid``, or the one reason it is not.
- ``GET /.well-known/jwks.json`` (public) is the JWK Set of the license
  verification keys of every retained key, ``kid`` its index: any JOSE
  library verifies offline licenses with it.

A license is checked against one view of the key store, so a rotation
in flight never makes it fail halfway.
"""

import logging
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from torro import licenses, logs
from torro.api.endpoints import FULL, Call, Endpoint
from torro.api.errors import ApiError
from torro.api.service import ViewKeyRing
from torro.manager import iso_time
from torro.store.keystore import StoreView


MAX_FEATURES = 64
MAX_TEXT = 256

security_log = logging.getLogger(logs.SECURITY)


class LicenseRequest(BaseModel):
    """What a new license says; times in seconds since the epoch."""

    model_config = ConfigDict(strict=True, extra="forbid")

    subject: str = Field(min_length=1, max_length=MAX_TEXT)
    expires: int = Field(ge=0, le=licenses.MAX_TIME)
    features: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(
        default=[], max_length=MAX_FEATURES
    )
    offline: bool = False
    not_before: int | None = Field(default=None, ge=0, le=licenses.MAX_TIME)


class IssuedLicense(BaseModel):
    """A new license, and which key signed it."""

    license: str
    kid: int
    algorithm: str
    offline: bool
    expires: str


class LicenseToCheck(BaseModel):
    """A license as presented."""

    model_config = ConfigDict(strict=True, extra="forbid")

    license: str


class LicenseCheck(BaseModel):
    """Whether a license is valid, and why not.

    ``reason`` is one of malformed, bad_signature, expired,
    not_yet_valid, unknown_kid, key_retired, wrong_algorithm; what the
    license grants is given only when it is valid.
    """

    valid: bool
    reason: str | None
    detail: str | None
    kid: int | None
    subject: str | None
    expires: str | None
    features: list[str] | None
    offline: bool | None


class JsonWebKey(BaseModel):
    """The public license verification key of one retained key."""

    kty: str
    crv: str
    x: str
    kid: str
    alg: str
    use: str


class JsonWebKeySet(BaseModel):
    """The JWK Set of every retained key (RFC 7517)."""

    keys: list[JsonWebKey]


def issue(call: Call) -> IssuedLicense:
    """Issue a license signed with the current key; needs a full token.

    422 when a field is of the wrong type or out of range, or when the
    license would expire before it starts.
    """

    body: LicenseRequest = call.body
    caller = call.caller
    assert caller is not None

    def sign(view: StoreView) -> tuple[str, int, str]:
        ring = ViewKeyRing(view)
        kid = ring.current_index()
        token = licenses.issue_license(
            ring,
            subject=body.subject,
            expires=body.expires,
            features=body.features,
            offline=body.offline,
            not_before=body.not_before,
        )
        algorithm = licenses.OFFLINE_ALGORITHM if body.offline \
            else licenses.hmac_algorithm(view.records[kid].algorithm)
        return token, kid, algorithm

    try:
        token, kid, algorithm = call.service.read(sign, fresh=True)
    except (TypeError, ValueError) as exc:
        raise ApiError(422, str(exc)) from None
    security_log.info(
        "api: license issued for subject %r with key %d, expires %s, %s, "
        "by full token %s from %s",
        body.subject,
        kid,
        iso_time(body.expires * 1000),
        algorithm,
        caller.token_id,
        caller.address,
    )
    return IssuedLicense(
        license=token,
        kid=kid,
        algorithm=algorithm,
        offline=body.offline,
        expires=iso_time(body.expires * 1000),
    )


def validate(call: Call) -> LicenseCheck:
    """Check a license against the retained keys; public.

    200 whether it is valid or not; when not, ``reason`` says why.
    """

    body: LicenseToCheck = call.body

    def check(view: StoreView) -> licenses.License:
        return licenses.verify_license(body.license, ViewKeyRing(view))

    try:
        found = call.service.read(check)
    except licenses.LicenseError as exc:
        return LicenseCheck(
            valid=False,
            reason=exc.reason,
            detail=exc.detail,
            kid=exc.kid,
            subject=None,
            expires=None,
            features=None,
            offline=None,
        )
    return LicenseCheck(
        valid=True,
        reason=None,
        detail=None,
        kid=found.kid,
        subject=found.subject,
        expires=iso_time(found.expires * 1000),
        features=list(found.features),
        offline=found.offline,
    )


def jwks(call: Call) -> JsonWebKeySet:
    """The public keys that verify offline licenses, ``kid`` the index.
    """
    return JsonWebKeySet.model_validate(call.service.jwks())


ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/licenses",
        issue,
        reply=IssuedLicense,
        access=FULL,
        body=LicenseRequest,
        errors=(503,),
        tag="licenses",
    ),
    Endpoint(
        "POST",
        "/api/licenses/validate",
        validate,
        reply=LicenseCheck,
        body=LicenseToCheck,
        errors=(429, 503),
        tag="licenses",
    ),
    Endpoint(
        "GET",
        "/.well-known/jwks.json",
        jwks,
        reply=JsonWebKeySet,
        errors=(503,),
        tag="licenses",
    ),
]
