"""Optional bearer-token authentication of ``/rank`` and ``/metrics`` (RFC 6750, header only).

With ``serve_auth_token`` (or ``serve_auth_token_file``) set, a request to a protected route must
carry ``Authorization: Bearer <token>``; otherwise it gets 401 with ``WWW-Authenticate: Bearer``
before admission control and before its body is read, so unauthenticated traffic can neither
take admission slots nor cost a body parse. ``/healthz`` and ``/readyz`` stay open for probes.

One shared token is meant for a node behind a gateway or mesh that terminates TLS and
authenticates end users itself: the token proves the request came through that gateway (and
keeps others from scraping ``/metrics``). It is no per-user identity and no replacement for TLS:
on a network others can read, terminate TLS in front of the node.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Final, NamedTuple

from base.settings import Settings

PROTECTED_ROUTES: Final = frozenset({"/rank", "/metrics"})
UNAUTHORIZED: Final = "unauthorized"  # error type in the 401 body and errors_total label
REALM: Final = "paperec"
MIN_TOKEN_CHARS: Final = 16
_SCHEME: Final = b"bearer"  # auth schemes are case-insensitive (RFC 9110 11.1)


class Refusal(NamedTuple):
    """Why a request was refused: the 401's message and its ``WWW-Authenticate`` value."""

    msg: str
    challenge: str


# No token, or another scheme: a plain challenge (RFC 6750 3.1: no error code when the request
# lacks bearer credentials; invalid_request would call for a 400).
MISSING: Final = Refusal("missing bearer token (Authorization: Bearer <token>)", f'Bearer realm="{REALM}"')
MALFORMED: Final = Refusal("Authorization header is not 'Bearer <token>'", f'Bearer realm="{REALM}"')
INVALID: Final = Refusal("invalid bearer token", f'Bearer realm="{REALM}", error="invalid_token"')


class BearerAuth:
    """Checks the ``Authorization`` header of a request against one configured token."""

    def __init__(self, token: str) -> None:
        check_token(token)
        # Only the digest is kept, and digests are compared: equal lengths, so compare_digest's
        # time reveals neither the token nor its length.
        self._digest = hashlib.sha256(token.encode()).digest()

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> Refusal | None:
        """None when the request carries the token; else why not (RFC 6750 3.1 error codes)."""
        presented = next((value for name, value in headers if name == b"authorization"), None)
        if presented is None:  # ASGI header names are lower-cased
            return MISSING
        scheme, _, credentials = presented.strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != _SCHEME or not credentials:
            return MALFORMED
        if not hmac.compare_digest(hashlib.sha256(credentials).digest(), self._digest):
            return INVALID
        return None


def check_token(token: str) -> None:
    """Reject tokens that are guessable or cannot travel intact in a header, naming the setting."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"serve_auth_token must be at least {MIN_TOKEN_CHARS} characters")
    if not all("!" <= c <= "~" for c in token):
        raise ValueError("serve_auth_token must be printable ASCII without spaces (it travels in a header)")


def bearer_auth(settings: Settings) -> BearerAuth | None:
    """The node's authentication from its settings; None when no token is configured."""
    token = settings.serve_bearer_token()
    return BearerAuth(token) if token else None
