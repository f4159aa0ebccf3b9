"""The example app's API (componentize-py): answers with its wasi:config variables."""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        greeting = store.get("greeting") or "hello"
        version = store.get("version") or "?"
        path = request.path_with_query() or "/"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(f"{greeting} ({version}) at {path}\n".encode())
        OutgoingBody.finish(body, None)
