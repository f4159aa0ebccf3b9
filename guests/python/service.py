"""A WASI 0.3 HTTP service (`wasi:http/service@0.3.0`), built by componentize-py.

    GET  /...        200 "hello from python 0.3 at PATH"
    POST /echo       200, the request body back, each chunk written as soon as it is read (the
                     response goes out before the request body has ended)
    GET  /fetch      sends GET to the URL in the `x-fetch` header with wasi:http/client and
                     answers its status and body, or 502 with the error code
    GET  /storm?n=N  sends N GETs to the `x-fetch` URL at once and answers how they went:
                     "ok=K ErrorCode_...=M" (a guest storming the network)
    GET  /url        200 "SCHEME://AUTHORITY/PATH": the request as the guest was given it
    GET  /count      200 "count N": how many requests this instance has answered
    GET  /abort      200, writes "partial" to the body, then fails
    GET  /random     200, 16 random hex digits, `cache-control: max-age=60` (a shared cache
                     may keep it); /random/private: the same, `cache-control: private`
The echo's response trailers are the request's.
"""

import asyncio
import os

import wit_world
from wit_world import exports
from wit_world.imports import client
from wit_world.imports.wasi_http_types import (
    Fields, Method_Get, Method_Post, Request, Response, Scheme_Http, Scheme_Https,
)
from componentize_py_types import Err, Ok
import componentize_py_async_support


def no_trailers():
    return wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
        lambda: Ok(None))


ANSWERED = 0


def respond(status, headers, body_writer, trailers_rx=None):
    """A response whose body `body_writer(stream)` writes from a task of its own (after
    `handle` has returned the response: the only way to write a 0.3 response body)."""
    writer, reader = wit_world.byte_stream()
    if trailers_rx is None:
        # No trailers: the writer is dropped unwritten, and the reader gets the default.
        _, trailers_rx = no_trailers()

    async def write():
        with writer:
            await body_writer(writer)

    componentize_py_async_support.spawn(write())
    response, _ = Response.new(Fields.from_list(headers), reader, trailers_rx)
    response.set_status_code(status)
    return response


def text(status, body):
    data = body.encode()

    async def write(stream):
        await stream.write_all(data)

    return respond(status, [("content-type", b"text/plain")], write)


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        global ANSWERED
        ANSWERED += 1
        method = request.get_method()
        path = request.get_path_with_query() or "/"
        if isinstance(method, Method_Post) and path == "/echo":
            _, done = wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))
            body, trailers = Request.consume_body(request, done)

            async def echo(stream):
                with body:
                    while not body.writer_dropped:
                        chunk = await body.read(65536)
                        if chunk:
                            await stream.write_all(chunk)

            return respond(200, [("content-type", b"application/octet-stream")], echo, trailers)
        if path == "/url":
            scheme = request.get_scheme()
            name = {Scheme_Http: "http", Scheme_Https: "https"}.get(type(scheme))
            name = name or getattr(scheme, "value", "none")
            return text(200, f"{name}://{request.get_authority()}{path}")
        if path.startswith("/random"):
            cc = b"private" if path == "/random/private" else b"max-age=60"
            data = os.urandom(8).hex().encode()

            async def write_random(stream):
                await stream.write_all(data)

            return respond(200, [("cache-control", cc)], write_random)
        if path == "/count":
            return text(200, f"count {ANSWERED}")
        if path == "/abort":
            async def fail(stream):
                await stream.write_all(b"partial")
                raise RuntimeError("the body fails on purpose")

            return respond(200, [("content-type", b"text/plain")], fail)
        if isinstance(method, Method_Get) and path.startswith("/storm"):
            url = request.get_headers().get("x-fetch")
            n = int(path.partition("n=")[2] or "100")
            outcomes = await asyncio.gather(*(send_only(url[0].decode()) for _ in range(n)))
            counts = {}
            for outcome in outcomes:
                counts[outcome] = counts.get(outcome, 0) + 1
            return text(200, " ".join(f"{k}={v}" for k, v in sorted(counts.items())) + "\n")
        if isinstance(method, Method_Get) and path == "/fetch":
            url = request.get_headers().get("x-fetch")
            if not url:
                return text(400, "x-fetch: the URL to fetch\n")
            return await fetch(url[0].decode())
        return text(200, f"hello from python 0.3 at {path}\n")


def outgoing_request(url):
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    _, trailers_rx = no_trailers()
    outgoing, _ = Request.new(Fields(), None, trailers_rx, None)
    outgoing.set_scheme(Scheme_Https() if scheme == "https" else Scheme_Http())
    outgoing.set_authority(authority)
    outgoing.set_path_with_query("/" + path)
    return outgoing


async def send_only(url):
    """Sends a GET to `url`: "ok" with a response (its body left unread), or the error's name."""
    try:
        await client.send(outgoing_request(url))
        return "ok"
    except Err as e:
        return type(e.value).__name__


async def fetch(url):
    try:
        response = await client.send(outgoing_request(url))
    except Err as e:
        return text(502, f"error {type(e.value).__name__}\n")
    status = response.get_status_code()
    _, done = wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))
    body, _ = Response.consume_body(response, done)
    data = b""
    with body:
        while not body.writer_dropped:
            data += await body.read(65536)
    return text(200, f"status {status}: {data.decode(errors='replace')}")
