"""A small, strict HTTP/1.1 server on asyncio streams (GET and HEAD only, one request per
connection). The parsing and the checks are pure functions (``parse_head``,
``check_auth``); ``serve_connection`` does the I/O with bounds on everything a client
controls: the request line, the header lines, their number and total size, the time to
send them, and the number of connections at once. A request with a body is refused. Every
answer carries the security headers (``SECURITY_HEADERS``); an error is a short plain-text
4xx/5xx, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("dh.web")

MAX_LINE = 4096  # request line and each header line, bytes
MAX_HEADERS = 64
MAX_HEAD = 16384  # request line + headers, bytes
HEAD_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 16
AUTH_FAIL_DELAY_S = 0.5

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    ("Cache-Control", "no-store"),
)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps the last value


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


def _token_ok(s: str) -> bool:
    return bool(s) and all(33 <= ord(c) <= 126 and c not in '()<>@,;:\\"/[]?={}' for c in s)


def parse_head(lines: list[bytes]) -> Request:
    """The request line and header lines (CRLF stripped) into a Request, or HttpError.
    Pure. Refuses anything that a read-only page server has no use for."""
    if not lines or not lines[0]:
        raise HttpError(400, "empty request")
    try:
        text = [ln.decode("ascii") for ln in lines]
    except UnicodeDecodeError:
        raise HttpError(400, "non-ASCII bytes in the request head") from None
    parts = text[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1")
        raise HttpError(400, "malformed request line")
    if not _token_ok(method):
        raise HttpError(400, "malformed method")
    headers: dict[str, str] = {}
    for ln in text[1:]:
        name, sep, value = ln.partition(":")
        if not sep or not _token_ok(name) or any(ord(c) < 32 and c != "\t" for c in value):
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip(" \t")
    if method not in ("GET", "HEAD"):
        raise HttpError(405, "read-only: GET and HEAD only", (("Allow", "GET, HEAD"),))
    if "transfer-encoding" in headers:
        raise HttpError(501, "no request bodies")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400, "bad Content-Length")
    if int(length) > 0:
        raise HttpError(413, "no request bodies")
    if not target.startswith("/") or target.startswith("//"):
        raise HttpError(400, "only origin-form targets (/path)")
    split = urlsplit(target)
    try:
        path = unquote(split.path, errors="strict") if "%" in split.path else split.path
    except UnicodeDecodeError:
        raise HttpError(400, "bad percent-encoding") from None
    if "\x00" in path or ".." in path.split("/"):
        raise HttpError(400, "bad path")
    try:
        query = parse_qs(split.query, max_num_fields=8, strict_parsing=False)
    except ValueError:
        raise HttpError(400, "bad query") from None
    return Request(method, path, query, headers)


def check_auth(header: str | None, user: str, password: str) -> bool:
    """HTTP basic auth: the Authorization header against one user and password, in
    constant time. Pure."""
    if header is None:
        return False
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    u, sep, p = raw.partition(":")
    ok_user = hmac.compare_digest(u.encode(), user.encode())
    ok_pw = hmac.compare_digest(p.encode(), password.encode())
    return bool(sep) and ok_user and ok_pw


def render(resp: Response, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Error')}"]
    hdrs = [
        ("Content-Type", resp.content_type),
        ("Content-Length", str(len(resp.body))),
        ("Connection", "close"),
        *SECURITY_HEADERS,
        *resp.headers,
    ]
    lines += [f"{k}: {v}" for k, v in hdrs]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + resp.body


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    body = f"{status} {REASONS.get(status, 'Error')}: {message}\n".encode()
    return Response(status, body, "text/plain; charset=utf-8", headers)


async def read_head(reader: asyncio.StreamReader) -> list[bytes]:
    """Lines up to the blank line, within the bounds (HttpError otherwise)."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(414 if not lines else 431, "line too long") from None
        except asyncio.IncompleteReadError as e:
            if not lines and not e.partial:
                raise ConnectionResetError from None
            raise HttpError(400, "incomplete request") from None
        total += len(line)
        if len(line) > MAX_LINE:
            raise HttpError(414 if not lines else 431, "line too long")
        if total > MAX_HEAD or len(lines) > MAX_HEADERS:
            raise HttpError(431, "request head too large")
        line = line.rstrip(b"\r\n")
        if not line:
            if not lines:
                continue  # tolerate a leading empty line (RFC 9112 2.2)
            return lines
        lines.append(line)


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error answer to a request that may not have been read whole: half-close
    and swallow what the client still sends (bounded), so closing does not reset the
    connection before the client has read the answer."""
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        left = 1 << 20
        while left > 0:
            chunk = await asyncio.wait_for(reader.read(65536), 1.0)
            if not chunk:
                break
            left -= len(chunk)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Auth:
    user: str
    password: str


class HttpServer:
    """Connection handling: bounds, auth, the handler, errors as 4xx/5xx."""

    def __init__(self, handler: Handler, auth: Auth | None) -> None:
        self.handler = handler
        self.auth = auth
        self.active = 0
        self.served = 0
        self.last_activity = 0.0

    async def respond(self, head: list[bytes]) -> tuple[Response, bool]:
        req = parse_head(head)
        head_only = req.method == "HEAD"
        if self.auth is not None and not check_auth(
            req.headers.get("authorization"), self.auth.user, self.auth.password
        ):
            if "authorization" in req.headers:
                await asyncio.sleep(AUTH_FAIL_DELAY_S)  # slows guessing, blocks nobody
            challenge = (("WWW-Authenticate", 'Basic realm="dh-agent", charset="UTF-8"'),)
            return error_response(401, "credentials needed", challenge), head_only
        return await self.handler(req), head_only

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        self.active += 1
        self.last_activity = loop.time()
        head_only = False
        try:
            if self.active > MAX_CONNECTIONS:
                resp = error_response(503, "busy")
            else:
                try:
                    head = await asyncio.wait_for(read_head(reader), HEAD_TIMEOUT_S)
                    resp, head_only = await self.respond(head)
                except HttpError as e:
                    resp = error_response(e.status, e.message, e.headers)
                except TimeoutError:
                    resp = error_response(408, "request head not received in time")
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                except Exception:
                    log.exception("request failed")
                    resp = error_response(500, "internal error (logged)")
            writer.write(render(resp, head_only))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            self.served += 1
            if resp.status >= 400:
                await linger(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.active -= 1
            self.last_activity = loop.time()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)
