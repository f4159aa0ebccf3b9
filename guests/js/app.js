// A wasi:http/proxy component in JavaScript (componentize-js): greets the caller with the path.
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';

export const incomingHandler = {
  handle(request, responseOut) {
    const path = request.pathWithQuery() || '/';
    const response = new OutgoingResponse(
      Fields.fromList([['content-type', new TextEncoder().encode('text/plain')]]),
    );
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(new TextEncoder().encode(`hello from javascript at ${path}\n`));
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
