"""Who may call the admin endpoints: bearer tokens of two roles.

Each endpoint declares what it needs (see torro.api.endpoints), and
:meth:`Authenticator.identify` checks it before anything else of the
request is read. The outcome, for every admin call and every refusal,
is one line in ``security.log`` naming the method, the path, the client
address and the token's id, never the token:

- no token configured at all: 403, saying how to create one (the API is
  never open by default);
- no ``Authorization`` header, or one that is not ``Bearer <token>``:
  401;
- a token that matches none, or a read-only token where a full one is
  needed: 403.

Tokens are compared by their SHA-256, each in constant time (see
torro.api.tokens).
"""

import dataclasses
import logging
from typing import NoReturn

from starlette.requests import Request

from torro import logs
from torro.api.errors import ApiError
from torro.api.tokens import (
    FULL,
    READ,
    TokenEntry,
    TokenFile,
    entries_from_text,
    find_entry,
    token_digest,
)
from torro.config import Settings


NO_TOKEN_MESSAGE = (
    "no admin token is configured: create one with `torro admin-token "
    "create` (KEY_DAEMON_ADMIN_TOKEN_FILE set), or set "
    "KEY_DAEMON_ADMIN_TOKENS"
)

security_log = logging.getLogger(logs.SECURITY)
system_log = logging.getLogger(logs.SYSTEM)


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made an admin call.

    :param role: ``full`` or ``read``.
    :param token_id: the id of the token used (not the token).
    :param address: the client address.
    """

    role: str
    token_id: str
    address: str

    @property
    def is_full(self) -> bool:
        return self.role == FULL


class Authenticator:
    """The tokens a daemon accepts, from its settings and token file.

    :param settings: KEY_DAEMON_ADMIN_TOKENS, KEY_DAEMON_READ_TOKENS and
        KEY_DAEMON_ADMIN_TOKEN_FILE.
    """

    def __init__(self, settings: Settings) -> None:
        self._configured: list[TokenEntry] = []
        for role, value in (
            (FULL, settings.admin_tokens),
            (READ, settings.read_tokens),
        ):
            text = None if value is None else value.get_secret_value()
            self._configured.extend(entries_from_text(role, text))
            for token in (text or "").split(","):
                logs.register_secret(token.strip())
        path = settings.admin_token_file
        self._file = None if path is None else TokenFile(path)
        # read once now, so that a file that cannot serve is logged at
        # start rather than at the first admin call
        self.entries()

    def entries(self) -> list[TokenEntry]:
        """Return every token accepted now, the token file read again if
        it changed."""
        if self._file is None:
            return self._configured
        found, fresh = self._file.entries()
        if fresh:
            self._report_file()
        return self._configured + found

    def identify(self, request: Request, need: str, route: str) -> Caller:
        """Return the caller of ``request`` if it may call with ``need``.

        :param need: :data:`FULL` or :data:`READ`.
        :param route: the endpoint's path as declared, ``{index}`` and
            all: logged instead of the request's path, which could hold
            anything, a key included.
        :raises ApiError: 401 or 403, logged.
        """
        entries = self.entries()
        if not entries:
            self._refuse(
                request, route, 403, NO_TOKEN_MESSAGE, "no token set"
            )
        header = request.headers.get("authorization")
        if header is None:
            self._refuse(
                request,
                route,
                401,
                "an admin token is needed: send Authorization: Bearer "
                "<token>",
                "no Authorization header",
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            self._refuse(
                request,
                route,
                401,
                "malformed Authorization header: send Bearer <token>",
                "malformed Authorization header",
            )
        entry = find_entry(token_digest(token), entries)
        if entry is None:
            self._refuse(
                request, route, 403, "the token is not valid",
                "unknown token",
            )
        if need == FULL and entry.role != FULL:
            self._refuse(
                request,
                route,
                403,
                "this endpoint needs a full admin token; read-only tokens "
                "see status details, stats and history metadata",
                f"read-only token {entry.token_id} on a full-token "
                "endpoint",
            )
        caller = Caller(entry.role, entry.token_id, _address(request))
        security_log.info(
            "api: %s %s by %s token %s from %s",
            request.method,
            route,
            caller.role,
            caller.token_id,
            caller.address,
        )
        return caller

    def _refuse(
        self,
        request: Request,
        route: str,
        status: int,
        message: str,
        why: str,
    ) -> NoReturn:
        security_log.warning(
            "api: refused %s %s from %s: %s (%d)",
            request.method,
            route,
            _address(request),
            why,
            status,
        )
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        raise ApiError(status, message, headers=headers)

    def _report_file(self) -> None:
        assert self._file is not None
        if self._file.error is not None:
            system_log.warning(
                "admin token file %s %s: its tokens are not accepted",
                self._file.path,
                self._file.error,
            )
        for number in self._file.skipped:
            system_log.warning(
                "admin token file %s: line %d is not "
                "'<full|read> sha256:<64 hex digits> [created]'; skipped",
                self._file.path,
                number,
            )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"

