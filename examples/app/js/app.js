// The example app's page (componentize-js): says how pier routed the request.
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';

const text = (bytes) => new TextDecoder().decode(bytes);

export const incomingHandler = {
  handle(request, responseOut) {
    const headers = request.headers();
    const first = (name) => {
      const values = headers.get(name);
      return values.length > 0 ? text(values[0]) : '';
    };
    const answer = JSON.stringify({
      component: 'web',
      path: request.pathWithQuery() || '/',
      route: first('x-pier-route'),
      pathInfo: first('x-pier-path-info'),
    });
    const response = new OutgoingResponse(
      Fields.fromList([['content-type', new TextEncoder().encode('application/json')]]),
    );
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(new TextEncoder().encode(answer + '\n'));
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
