"""ASGI guards in front of the studio's server: a request body size limit and allowed Host names.

`Guard` wraps any ASGI app (app.py hands it to Gradio's FastAPI app as middleware). It refuses,
before the app reads anything:
- a body over `max_body` bytes: 413, whether the client declared its length or streams it
  chunked (a 100 MB JSON body was accepted and parsed before);
- a Host header naming another server (`hosts`), 400: a DNS-rebinding page at evil.example
  whose name resolves to 127.0.0.1 would otherwise drive a local studio from the browser.
It is plain ASGI (and Starlette's HTTPException); it knows nothing of Gradio.
"""
from __future__ import annotations

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
            return await refuse(scope, send, 413, f"The request body is over {self.max_body:,} bytes.")
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
        except BodyTooLarge:
            if not started:
                await refuse(scope, send, 413, f"The request body is over {self.max_body:,} bytes.")


async def refuse(scope, send, status: int, text: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
