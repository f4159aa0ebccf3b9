"""A wasi:http/proxy component in Python (componentize-py) that makes an outgoing request: it
fetches the URL in the request's `x-fetch-url` header and answers "fetched: BODY", or, when the
request fails, 502 with the error code's name."""

from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)


def fetch(url: str) -> bytes:
    """GET `url` through wasi:http/outgoing-handler; raises on failure."""
    parts = urlsplit(url)
    request = OutgoingRequest(Fields())
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path or "/")
    future = outgoing_handler.handle(request, None)
    while (result := future.get()) is None:
        with future.subscribe() as pollable:
            pollable.block()
    # option<result<result<incoming-response, error-code>>>: the outer Err means the future was
    # read twice; the inner one carries the request's error code.
    if isinstance(result, Err):
        raise result
    if isinstance(result.value, Err):
        raise result.value
    response = result.value.value
    body = response.consume()
    data = b""
    with body.stream() as stream:
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err:
                break
    return data


def answer(response_out: ResponseOutparam, status: int, text: bytes) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with body.write() as stream:
        stream.blocking_write_and_flush(text)
    OutgoingBody.finish(body, None)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        urls = request.headers().get("x-fetch-url")
        if not urls:
            answer(response_out, 400, b"send the URL to fetch in x-fetch-url\n")
            return
        try:
            answer(response_out, 200, b"fetched: " + fetch(urls[0].decode()))
        except Err as e:
            answer(response_out, 502, f"fetch failed: {type(e.value).__name__}\n".encode())
