// pier's Proxy-Wasm test filter on @gcoredev/proxy-wasm-sdk-as 1.2.3 (ABI 0.2.1, AssemblyScript
// 0.28 with @assemblyscript/wasi-shim). guests/proxywasm-as/solo/assembly/index.ts does the same
// with the other SDK, so one test drives both (NAME is the SDK's name):
//   every request            request header  x-sdk: NAME
//   every response           response header x-sdk-response: NAME
//   /sdk/local               local response 403 "denied by NAME", header x-local: NAME
//   /sdk/body                response body becomes "NAME:" + body (buffered; content-length removed)
//   /sdk/ticks               local response 200, body = shared data NAME.ticks ("0" if absent)
//   /sdk/callout             pauses, GETs /callout from upstream "backend", resumes with request
//                            header x-callout: BODY ("failed" if the call failed)
//   on_configure             sets a 50 ms tick
//   every tick               NAME.ticks += 1 (get, then set with the cas)
// This SDK logs through WASI fd_write on stdout ("[LEVEL]: message"), not proxy_log.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  RootContext, BaseContext, Context, registerRootContext, WasmResultValues,
  FilterHeadersStatusValues, FilterDataStatusValues, GrpcStatusValues, BufferTypeValues,
  stream_context, send_local_response, makeHeaderPair, Headers, get_buffer_bytes,
  set_buffer_bytes, get_shared_data, set_shared_data, set_tick_period_milliseconds,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";

const NAME = "gcore";
const TICKS_KEY = NAME + ".ticks";

function parseDecimal(s: string): u64 {
  let n: u64 = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) break;
    n = n * 10 + <u64>(c - 48);
  }
  return n;
}

function pathOnly(path: string): string {
  const q = path.indexOf("?");
  return q < 0 ? path : path.substring(0, q);
}

class SdkRoot extends RootContext {
  constructor(context_id: u32) {
    super(context_id);
  }

  createContext(context_id: u32): Context {
    return new SdkFilter(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    const ok = super.onConfigure(configuration_size);
    set_tick_period_milliseconds(50);
    return ok;
  }

  onTick(): void {
    const current = get_shared_data(TICKS_KEY);
    let count: u64 = 0;
    let cas: u32 = 0;
    if (current.result == WasmResultValues.Ok) {
      cas = current.cas;
      const value = current.value;
      if (value !== null) count = parseDecimal(String.UTF8.decode(value));
    }
    // On CAS_MISMATCH another VM counted first: the next tick tries again.
    set_shared_data(TICKS_KEY, String.UTF8.encode((count + 1).toString()), cas);
  }
}

// The callout's answer, on the root context; the SDK has already made the paused stream the
// effective context (proxy_set_effective_context) before calling this.
function onCalloutResponse(origin: BaseContext, headers: u32, body_size: usize, trailers: u32): void {
  let value = "failed";
  if (headers > 0) {
    value = body_size > 0
      ? String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, <u32>body_size))
      : "";
  }
  stream_context.headers.request.add("x-callout", value);
  origin.continueRequest();
}

class SdkFilter extends Context {
  path: string = "";

  constructor(context_id: u32, root_context: SdkRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    this.path = pathOnly(stream_context.headers.request.get(":path"));
    stream_context.headers.request.add("x-sdk", NAME);
    if (this.path == "/sdk/local") {
      const extra: Headers = [makeHeaderPair("x-local", NAME)];
      send_local_response(403, "", String.UTF8.encode("denied by " + NAME), extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.path == "/sdk/ticks") {
      const current = get_shared_data(TICKS_KEY);
      let body = "0";
      if (current.result == WasmResultValues.Ok) {
        const value = current.value;
        if (value !== null && value.byteLength > 0) body = String.UTF8.decode(value);
      }
      send_local_response(200, "", String.UTF8.encode(body), [], GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.path == "/sdk/callout") {
      const callHeaders: Headers = [
        makeHeaderPair(":method", "GET"), makeHeaderPair(":path", "/callout"), makeHeaderPair(":authority", "backend"),
      ];
      const result = this.root_context.httpCall("backend", callHeaders, new ArrayBuffer(0), [], 5000, this, onCalloutResponse);
      if (result != WasmResultValues.Ok) {
        stream_context.headers.request.add("x-callout", "failed");
        return FilterHeadersStatusValues.Continue;
      }
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-sdk-response", NAME);
    if (this.path == "/sdk/body") {
      stream_context.headers.response.remove("content-length");
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.path != "/sdk/body") {
      return FilterDataStatusValues.Continue;
    }
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    const original = body_buffer_length > 0
      ? get_buffer_bytes(BufferTypeValues.HttpResponseBody, 0, <u32>body_buffer_length)
      : new ArrayBuffer(0);
    const prefix = String.UTF8.encode(NAME + ":");
    const replaced = new ArrayBuffer(prefix.byteLength + original.byteLength);
    memory.copy(changetype<usize>(replaced), changetype<usize>(prefix), prefix.byteLength);
    memory.copy(changetype<usize>(replaced) + prefix.byteLength, changetype<usize>(original), original.byteLength);
    set_buffer_bytes(BufferTypeValues.HttpResponseBody, 0, <u32>body_buffer_length, replaced);
    return FilterDataStatusValues.Continue;
  }
}

// This SDK keeps a single root context and ignores the name (it never asks for plugin_root_id).
registerRootContext((context_id: u32): RootContext => { return new SdkRoot(context_id); }, NAME);
