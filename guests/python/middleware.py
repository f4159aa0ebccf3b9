"""A WASI 0.3 middleware (`wasi:http/middleware@0.3.0`), built by componentize-py: it imports
`wasi:http/handler` (the next component of the chain) and exports it.

    /mw/trap         raises: the middleware traps
    no `authorization: Bearer letmein` header
                     answers 401 "denied by the middleware" itself (the next handler never runs)
    otherwise        forwards the request, its body streamed through, with `authorization`
                     removed, `x-user: alice` added, and a path under /old/ moved to /new/;
                     adds `x-middleware: python` to the response (its body streamed back
                     through), or answers 502 "next failed: ERROR" if the next handler answered
                     with an error code
"""

import wit_world
from wit_world import exports
from wit_world.imports import handler
from wit_world.imports.wasi_http_types import Fields, Request, Response
from componentize_py_types import Err, Ok
import componentize_py_async_support


def no_trailers():
    return wit_world.result_option_wasi_http_types_fields_wasi_http_types_error_code_future(
        lambda: Ok(None))


def done_future():
    return wit_world.result_unit_wasi_http_types_error_code_future(lambda: Ok(None))


def text(status, body):
    data = body.encode()
    writer, reader = wit_world.byte_stream()
    _, trailers = no_trailers()

    async def write():
        with writer:
            await writer.write_all(data)

    componentize_py_async_support.spawn(write())
    response, _ = Response.new(Fields.from_list([("content-type", b"text/plain")]), reader, trailers)
    response.set_status_code(status)
    return response


class Handler(exports.Handler):
    async def handle(self, request: Request) -> Response:
        path = request.get_path_with_query() or "/"
        if path == "/mw/trap":
            raise RuntimeError("the middleware fails on purpose")
        headers = request.get_headers()
        if headers.get("authorization") != [b"Bearer letmein"]:
            return text(401, "denied by the middleware\n")

        # A request's headers cannot change: forward a new request with the same method,
        # scheme, authority and body, and the headers changed.
        # (Consuming the body consumes the request: read the rest first.)
        forwarded = [(n, v) for n, v in headers.copy_all() if n != "authorization"]
        forwarded.append(("x-user", b"alice"))
        method, scheme, authority = (
            request.get_method(), request.get_scheme(), request.get_authority())
        _, done = done_future()
        body, trailers = Request.consume_body(request, done)
        outgoing, _ = Request.new(Fields.from_list(forwarded), body, trailers, None)
        outgoing.set_method(method)
        outgoing.set_scheme(scheme)
        outgoing.set_authority(authority)
        if path.startswith("/old/"):
            path = "/new/" + path[len("/old/"):]
        outgoing.set_path_with_query(path)
        try:
            response = await handler.handle(outgoing)
        except Err as e:
            return text(502, f"next failed: {type(e.value).__name__}\n")

        status = response.get_status_code()
        answered = response.get_headers().copy_all() + [("x-middleware", b"python")]
        _, done = done_future()
        body, trailers = Response.consume_body(response, done)
        back, _ = Response.new(Fields.from_list(answered), body, trailers)
        back.set_status_code(status)
        return back
