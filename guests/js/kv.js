// A JavaScript app (componentize-js) counting in the key-value store (wasi:keyvalue 0.2.0-draft):
// every request increments "js-hits" in "default" and answers "count N".
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';

export const incomingHandler = {
  handle(request, responseOut) {
    const bucket = open('default');
    const count = increment(bucket, 'js-hits', 1n);
    const response = new OutgoingResponse(
      Fields.fromList([['content-type', new TextEncoder().encode('text/plain')]]),
    );
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(new TextEncoder().encode(`count ${count}\n`));
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
