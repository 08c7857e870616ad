"""Response headers that keep the pages (whose URLs hold job ids, which are bearer tokens) from being framed,
sniffed or leaked through Referer, and refusal of cross-site requests that change things.

``SecurityHeaders`` gives every response, unless the route set its own:
- ``Content-Security-Policy``: scripts, styles, images and requests from this origin only, no inline script, no
  framing (``frame-ancestors 'none'``), forms post only here. ``/docs`` (Swagger UI, served from a CDN) sets its own
  policy: the CDN's script and style, and its one inline script allowed by hash, not ``'unsafe-inline'``.
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` (older browsers)
  and ``Cross-Origin-Resource-Policy: same-origin`` (other sites cannot embed a result image).

``CrossSiteGuard`` answers 403 to a POST/PUT/PATCH/DELETE that a browser says comes from another site
(``Sec-Fetch-Site``), or whose ``Origin`` is not this host, unless the origin is in the CORS allow-list (REST API
only). Requests without either header (curl, scripts) are not a browser acting for a user, and pass.

``TrustedHosts`` answers 400 to a request whose ``Host`` is not an allowed name (``SIMPSONIZE_ALLOWED_HOSTS``), as
Starlette's ``TrustedHostMiddleware`` does, but in JSON like every other error, with no ``www.`` redirect (no URL is
built from the ``Host`` header), and with IPv6 literals matched without their brackets (``::1`` allows
``[::1]:8000``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from ipaddress import IPv6Address
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SWAGGER_CDN = "https://cdn.jsdelivr.net"
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
CROSS_SITE = "This request came from another web site, so it was refused."
BAD_HOST = "This server does not answer to that host name (the request's Host header)."


def docs_csp(html: str) -> str:
    """The policy for the Swagger UI page ``html``: its CDN, and its inline scripts by their SHA-256."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, re.S)
    )
    return (
        f"default-src 'none'; script-src {SWAGGER_CDN} {hashes}; style-src {SWAGGER_CDN}; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    )


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in COMMON_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", PAGE_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _netloc(url_or_host: str, scheme: str | None = None) -> str:
    """``host[:port]`` in lower case, without the scheme's default port."""
    if "://" in url_or_host:
        parts = urlsplit(url_or_host)
        scheme, netloc = parts.scheme, parts.netloc
    else:
        netloc = url_or_host
    netloc = netloc.lower()
    for default in (":80",) if scheme == "http" else (":443",) if scheme == "https" else (":80", ":443"):
        if netloc.endswith(default):
            netloc = netloc[: -len(default)]
    return netloc


def is_cross_site(headers: Headers, scheme: str, allowed_origins: frozenset[str] = frozenset()) -> bool:
    """Whether a browser sent this request on behalf of another site (one not in ``allowed_origins``)."""
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/") in allowed_origins:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")  # "none": typed in, or a bookmark
    if origin is not None:
        return origin == "null" or _netloc(origin) != _netloc(headers.get("host", ""), scheme)
    return False


class CrossSiteGuard:
    def __init__(self, app: ASGIApp, api_prefix: str, cors_origins: list[str]) -> None:
        self.app = app
        self.api_prefix = api_prefix
        self.cors_origins = frozenset(origin.rstrip("/") for origin in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            allowed = self.cors_origins if scope["path"].startswith(self.api_prefix) else frozenset()
            if is_cross_site(Headers(scope=scope), scope.get("scheme", "http"), allowed):
                response = JSONResponse({"detail": CROSS_SITE}, status_code=403)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._~%!$&'()*+,;=-]+))(?::[0-9]+)?", re.IGNORECASE)


def host_name(header: str | None) -> str | None:
    """The host of a ``Host`` header in lower case, without its port and an IPv6 literal's brackets (``::1``);
    ``None`` when the header is missing or malformed."""
    match = _HOST.fullmatch(header or "")
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            return str(IPv6Address(match["ipv6"]))
        except ValueError:
            return None
    return match["name"].lower()


class TrustedHosts:
    """400 ``{"detail": BAD_HOST}`` unless the ``Host`` header names one of ``allowed_hosts`` (``*.example.org``
    allows its subdomains; ``*`` allows any)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_hosts
        self.exact, self.suffixes = set(), []
        for pattern in allowed_hosts:
            pattern = pattern.strip().lower()
            if pattern.startswith("*."):
                self.suffixes.append(pattern[1:])
            elif pattern and pattern != "*":
                try:  # an IPv6 address, bare ("::1") or bracketed, in the form host_name gives
                    pattern = str(IPv6Address(pattern.strip("[]")))
                except ValueError:
                    pass
                self.exact.add(pattern)

    def allows(self, host: str | None) -> bool:
        if self.allow_any:
            return True
        if host is None:
            return False
        return host in self.exact or any(host.endswith(suffix) for suffix in self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allows(host_name(Headers(scope=scope).get("host"))):
            if scope["type"] == "websocket":  # none are served; refuse the handshake the ASGI way
                return await send({"type": "websocket.close", "code": 1008})
            return await JSONResponse({"detail": BAD_HOST}, status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)
