"""A wasi:http/proxy component in Python (componentize-py): greets the caller with the path;
`/url` answers the request's URL as the guest is given it (SCHEME://AUTHORITY/url)."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        text = f"hello from python at {path}\n"
        if path == "/url":
            scheme = request.scheme()
            name = {Scheme_Http: "http", Scheme_Https: "https"}.get(type(scheme))
            text = f"{name or getattr(scheme, 'value', 'none')}://{request.authority()}{path}"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode())
        OutgoingBody.finish(body, None)
