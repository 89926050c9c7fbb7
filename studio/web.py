"""ASGI guards in front of the studio's server: a body size limit, allowed Host names, sign-in.

`Guard` wraps any ASGI app (app.py hands it to Gradio's FastAPI app as middleware). It refuses,
before the app reads anything:
- a body over `max_body` bytes: 413, whether the client declared its length or streams it
  chunked (a 100 MB JSON body was accepted and parsed before);
- a Host header naming another server (`hosts`), 400: a DNS-rebinding page at evil.example
  whose name resolves to 127.0.0.1 would otherwise drive a local studio from the browser;
`JsonGuard`, inside the sign-in gate (so a visitor who has not signed in learns nothing of the
app's events), refuses a JSON body that is not strict JSON (NaN, Infinity), 422, or one its
`check` refuses, with the status that gives: Gradio answered a top-level NaN, and an event index
it does not have, with a bare HTTP 500. It answers FastAPI's `{"detail": ...}`, which clients show.
Both are plain ASGI (and Starlette's HTTPException); they know nothing of Gradio.
"""
from __future__ import annotations

import asyncio
import hmac
import http.cookies
import json
import re
from typing import Callable

from starlette.exceptions import HTTPException

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_name(header: str) -> str:
    """"example.com:7860" -> "example.com"; "[::1]:7860" -> "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, because
    FastAPI turns any other error met while reading a body into 400 "error parsing the body"."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body is over {limit:,} bytes.")


def strict_json(body: bytes):
    """The parsed body; ValueError, naming what is wrong, unless it is strict JSON (RFC 8259)."""
    def refuse_constant(name: str):
        raise ValueError(f"The request body holds {name}, which JSON does not allow; send a number.")
    try:
        return json.loads(body, parse_constant=refuse_constant)
    except UnicodeDecodeError as exc:
        raise ValueError("The request body is not UTF-8 text.") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"The request body is not JSON: {exc.msg} at character {exc.pos}.") from exc


# (scope, parsed body) -> None, or the status and text to refuse it with
JsonCheck = Callable[[dict, object], "tuple[int, str] | None"]


class Guard:
    def __init__(self, app, max_body: int, hosts: tuple[str, ...] | None = None):
        self.app, self.max_body = app, max_body
        self.hosts = None if hosts is None else {h.lower() for h in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.hosts is not None and host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            return await refuse(scope, send, 400, "This server does not answer to that Host name.")
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await refuse(scope, send, 413, BodyTooLarge(self.max_body).detail)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            if not started:
                await refuse(scope, send, 413, exc.detail)


class JsonGuard:
    """Reads a JSON request's body (within Guard's limit, which sits outside it), refuses it if
    it is not strict JSON or `check` says so, else hands the app the same body."""

    def __init__(self, app, check: JsonCheck | None = None):
        self.app, self.check = app, check

    async def __call__(self, scope, receive, send):
        headers = {k.lower(): v for k, v in scope.get("headers", [])} if scope["type"] == "http" else {}
        if headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/json":
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        problem = self.problem(scope, body)
        if problem:
            return await refuse(scope, send, *problem, as_json=True)
        await self.app(scope, replay(body, receive), send)

    def problem(self, scope, body: bytes) -> tuple[int, str] | None:
        if not body:
            return None
        try:
            parsed = strict_json(body)
        except ValueError as exc:
            return 422, str(exc)
        return self.check(scope, parsed) if self.check else None


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away: the app sees an empty body
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A `receive` that hands the app the body read already, then what the client sends next."""
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def refuse(scope, send, status: int, text: str, as_json: bool = False) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"detail": text}).encode() if as_json else text.encode()
    kind = b"application/json" if as_json else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SignInGate:
    """With --auth, nothing but the sign-in page and what it loads answers without a session.

    Gradio (6.31) checks the session on /config and its API routes, but not everywhere: without
    signing in, GET / and /gradio_api/runs embedded the whole API description (every endpoint,
    its defaults, the model's server path), POST /gradio_api/cancel cancelled a signed-in user's
    run, and /gradio_api/heartbeat opened a stream. Here a request without a valid session
    cookie reaches only OPEN paths; the page at / is the sign-in page with no API description.
    The session is Gradio's own: its access-token cookie, looked up in the app's tokens. Paths
    under `own_auth` (the A1111 API's) pass: their routes demand HTTP Basic auth themselves."""

    OPEN = {"/", "/login", "/login/", "/login_check", "/login_check/", "/logout", "/favicon.ico",
            "/theme.css", "/manifest.json", "/robots.txt",
            "/gradio_api/startup-events"}  # launch() calls it once itself; it runs nothing twice
    OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/")

    def __init__(self, app, own_auth: tuple[str, ...] = ()):
        self.app, self.own_auth = app, own_auth  # path prefixes whose routes check their own auth

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or self.signed_in(scope) or path.startswith(self.own_auth):
            return await self.app(scope, receive, send)
        if path not in self.OPEN and not path.startswith(self.OPEN_PREFIXES):
            return await refuse(scope, send, 401, "Not signed in: sign in with the user and password first.")
        if path != "/":
            return await self.app(scope, receive, send)
        held = []  # the page, to send without its API description

        async def hold(message):
            held.append(message)

        await self.app(scope, receive, hold)
        start, body = held[0], b"".join(m.get("body", b"") for m in held[1:])
        body = API_INFO.sub(b"window.gradio_api_info = null;</script>", body)
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def signed_in(scope) -> bool:
        app = scope.get("app")
        tokens, cookie_id = getattr(app, "tokens", None), getattr(app, "cookie_id", None)
        if not tokens or cookie_id is None:
            return False
        cookies = http.cookies.SimpleCookie()
        for key, value in scope.get("headers", []):
            if key.lower() == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except http.cookies.CookieError:
                    return False
        return any(name in cookies and cookies[name].value in tokens
                   for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"))


API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)


def slow_failures(user: str, password: str, delay: float = 1.0, wait=asyncio.sleep):
    """Gradio's `auth` callable for one user:password pair, in constant time; each wrong guess
    waits `delay` seconds in a single line with every other wrong guess, so guessing is held to
    about one try a second however many connections an attacker opens. Right ones never wait."""
    lock = asyncio.Lock()

    async def check(name: str, given: str) -> bool:
        right = hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(
            given.encode(), password.encode())
        if not right:
            async with lock:
                await wait(delay)
        return right

    return check
