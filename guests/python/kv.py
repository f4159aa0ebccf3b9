"""A Python app (componentize-py) on the key-value store, through wasi:keyvalue 0.2.0-draft2:

/count   increments "py-hits" in "default": "count N"
/batch   sets a=1 and b=2 at once, then reads a, b and zz at once: "a=1 b=2 zz=-"
/keys    every key of "default", a page at a time, sorted, one per line
/denied  opens "secret" (not granted): the error's name
/getset  one get and one set of "bench" (what a session lookup and update costs): "ok"
/none    no store at all (the benchmark's baseline): "ok"
/open    only opens "default"; /get opens and gets "bench" (what each step costs): "ok"
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import atomics, batch, store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


def answer(request: IncomingRequest) -> str:
    path = request.path_with_query() or "/"
    if path == "/none":
        return "ok"
    if path == "/denied":
        try:
            store.open("secret")
            return "opened"
        except Err as e:
            return type(e.value).__name__
    bucket = store.open("default")
    if path == "/open":
        return "ok"
    if path == "/get":
        bucket.get("bench")
        return "ok"
    if path == "/getset":
        value = bucket.get("bench") or b"0"
        bucket.set("bench", value)
        return "ok"
    if path == "/count":
        return f"count {atomics.increment(bucket, 'py-hits', 1)}"
    if path == "/batch":
        batch.set_many(bucket, [("a", b"1"), ("b", b"2")])
        got = batch.get_many(bucket, ["a", "b", "zz"])
        return " ".join(f"{k}={v.decode() if v is not None else '-'}" for k, v in got)
    if path == "/keys":
        keys, cursor = [], None
        while True:
            page = bucket.list_keys(cursor)
            keys.extend(page.keys)
            cursor = page.cursor
            if cursor is None:
                break
        return "\n".join(sorted(keys))
    return "?"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        text = answer(request)
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(f"{text}\n".encode())
        OutgoingBody.finish(body, None)
