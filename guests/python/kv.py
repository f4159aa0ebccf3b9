"""A Python app (componentize-py) on the key-value store, through wasi:keyvalue 0.2.0-draft2:

/count   increments "py-hits" in "default": "count N"
/batch   sets a=1 and b=2 at once, then reads a, b and zz at once: "a=1 b=2 zz=-"
/keys    every key of "default", a page at a time, sorted, one per line
/denied  opens "secret" (not granted): the error's name
/getset  one get and one set of "bench" (what a session lookup and update costs): "ok"
/none    no store at all (the benchmark's baseline): "ok"
/open    only opens "default"; /get opens and gets "bench" (what each step costs): "ok"
Abuse, each answering what the store said:
/abuse/batch     set-many, get-many and delete-many of 10,000 keys
/abuse/fat       set-many of 20 values of 1 MiB, then get-many and delete-many of them
/abuse/key       set of a 1 MiB key
/fill/START/N    sets keys k0000000 (from START on) .. N of them, 1,000 a call: "filled N"
/count-keys      counts every key of "default", a page at a time, holding none: "keys N pages P"
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
    if path.startswith("/abuse/"):
        return abuse(bucket, path[len("/abuse/"):])
    if path.startswith("/fill/"):
        start, n = (int(x) for x in path[len("/fill/"):].split("/"))
        for first in range(start, start + n, 1000):
            last = min(first + 1000, start + n)
            batch.set_many(bucket, [(f"k{i:07}", b"") for i in range(first, last)])
        return f"filled {n}"
    if path == "/count-keys":
        count, pages, cursor = 0, 0, None
        while True:
            page = bucket.list_keys(cursor)
            count += len(page.keys)
            pages += 1
            cursor = page.cursor
            if cursor is None:
                break
        return f"keys {count} pages {pages}"
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


def refusal(call) -> str:
    try:
        call()
        return "done"
    except Err as e:
        return f"{type(e.value).__name__}: {getattr(e.value, 'value', '')}"


def abuse(bucket, what: str) -> str:
    if what == "batch":
        keys = [f"many{i}" for i in range(10_000)]
        return "; ".join(
            [
                "set-many " + refusal(lambda: batch.set_many(bucket, [(k, b"") for k in keys])),
                "get-many " + refusal(lambda: batch.get_many(bucket, keys)),
                "delete-many " + refusal(lambda: batch.delete_many(bucket, keys)),
            ]
        )
    if what == "fat":
        mib = b"x" * (1 << 20)
        keys = [f"fat{i}" for i in range(20)]
        return "; ".join(
            [
                "set-many " + refusal(lambda: batch.set_many(bucket, [(k, mib) for k in keys])),
                "get-many " + refusal(lambda: batch.get_many(bucket, keys)),
                "delete-many " + refusal(lambda: batch.delete_many(bucket, keys)),
            ]
        )
    if what == "key":
        return "set " + refusal(lambda: bucket.set("k" * (1 << 20), b"v"))
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
