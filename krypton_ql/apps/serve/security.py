"""Who may talk to ``kql serve``, and how much: the checks every request passes before an
endpoint sees it.

- **Same origin.** A request must name this server: its ``Host`` is one of the names the server
  answers to, with its port (on loopback ``localhost``, ``127.0.0.1`` or ``[::1]``: a
  DNS-rebinding page sends its own name and is refused), and an ``Origin`` a browser sends is
  this server's own. API requests a browser marks as coming from another site
  (``Sec-Fetch-Site``) are refused too. Any page the user visits can send a request to a
  loopback port; these checks are what keep it from driving the explorer.
- **JSON only.** Every ``POST`` body but the upload's is ``Content-Type: application/json``
  (which a page elsewhere cannot send without the browser asking first, and this server never
  says yes); the upload is ``multipart/form-data``.
- **Bounded bodies.** A body above its route's limit is refused with 413, whether it says its
  length or streams it.
- **The token** (off loopback, or when given): in the query, the ``X-KQL-Token`` header or the
  page's cookie, compared in constant time.

Refusals are ``{"error": message}`` with status 403 or 413.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from compiler.errors import InvalidInputError

JSON_LIMIT = 64 * 1024  # a run request or a cancel
SQL_LIMIT = 1 << 20  # a statement in the SQL box
UPLOAD_SLACK = 64 * 1024  # a multipart form's headers and boundaries, beyond the photo


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_names(host: str) -> frozenset[str] | None:
    """The names a request's ``Host`` may give for a server listening on ``host``: loopback's
    names and the address itself; None (any) for a wildcard address, which needs the token.

    >>> sorted(allowed_names("127.0.0.1")), allowed_names("0.0.0.0")
    (['127.0.0.1', '::1', 'localhost'], None)
    """
    if host in WILDCARDS:
        return None
    return LOOPBACK_NAMES | {host.strip("[]").lower()}


def split_host(header: str, default_port: int) -> tuple[str, int | None]:
    """A ``Host`` header's name (lower case, IPv6 without brackets) and port (None: not a
    number).

    >>> split_host("[::1]:8000", 80), split_host("LocalHost", 80), split_host("a:b", 80)
    (('::1', 8000), ('localhost', 80), ('a', None))
    """
    name, port = header, ""
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in header:
        name, _, port = header.rpartition(":")
    if not port:
        return name.lower(), default_port
    return name.lower(), int(port) if port.isdigit() else None


class BodyTooLarge(InvalidInputError):
    """A request body above its route's limit (HTTP 413)."""


async def json_body(request: Request) -> Any:
    """The request's JSON (size already bounded by ``Limits``); anything else is a clear 400."""
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInputError("the request body is not JSON") from None
    except RecursionError:
        raise InvalidInputError("the request body's JSON is nested too deeply") from None


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class SameOrigin:
    """The ``Host``, ``Origin``, ``Sec-Fetch-Site`` and content-type checks of the module
    docstring. ``host`` is the address the server listens on."""

    def __init__(self, app: Any, host: str) -> None:
        self.app = app
        self.names = allowed_names(host)  # None: any name (a wildcard address; token needed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self.problem(Request(scope))
        if problem is not None:
            await _refuse(403, problem)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def problem(self, request: Request) -> str | None:
        """Why the request is refused (None: it is not)."""
        host = request.headers.get("host", "")
        name, port = split_host(host, 443 if request.url.scheme == "https" else 80)
        server = request.scope.get("server")
        if self.names is not None and (
            name not in self.names or (server is not None and port != server[1])
        ):
            return f"this server does not answer to the host {host!r}"
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            return f"requests from {origin} are refused: open the explorer's own page"
        api = request.url.path.startswith("/api/")
        site = request.headers.get("sec-fetch-site")
        if api and site is not None and site not in ("same-origin", "none"):
            return "requests from other sites are refused: open the explorer's own page"
        if request.method == "POST" and _has_body(request):
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            wanted = "multipart/form-data" if request.url.path == "/api/upload" else None
            if (wanted or "application/json") != kind:
                return f"send the body as {wanted or 'application/json'}, not {kind or 'nothing'}"
        return None


def _has_body(request: Request) -> bool:
    """Whether a request says it has a body, or a type for one (a bodiless POST needs none)."""
    headers = request.headers
    length = headers.get("content-length", "0")
    return (
        "content-type" in headers
        or "transfer-encoding" in headers
        or not length.isdigit()
        or int(length) > 0
    )


class Limits:
    """Request bodies bounded per route (``limit(path)``: the bytes, and what the limit is for):
    a declared length above it is refused at once, a streamed body when it passes it."""

    def __init__(self, app: Any, limit: Callable[[str], tuple[int, str]]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self.limit(scope["path"])
        declared = Request(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(413, _too_large(int(declared), limit, what))(scope, receive, send)
            return
        seen = 0

        async def bounded() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(_too_large(seen, limit, what))
            return message

        await self.app(scope, bounded, send)


def _too_large(size: int, limit: int, what: str) -> str:
    return f"the request body has {size:,} bytes or more, above the limit of {limit:,} ({what})"


class TokenCheck:
    """Every request carries the token (query, header or cookie), compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = (
            request.query_params.get("token")
            or request.headers.get("x-kql-token")
            or request.cookies.get("kql_token")
            or ""
        )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            message = "this server needs its token: open the URL kql serve printed"
            await _refuse(403, message)(scope, receive, send)
            return
        await self.app(scope, receive, send)
