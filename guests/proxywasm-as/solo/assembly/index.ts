// pier's Proxy-Wasm test filter on @solo-io/proxy-runtime 0.1.8 (ABI 0.2.0, AssemblyScript 0.14).
// guests/proxywasm-as/gcore/assembly/index.ts does the same with the other SDK, so one test drives
// both (NAME is the SDK's name):
//   every request            request header  x-sdk: NAME
//   every response           response header x-sdk-response: NAME
//   /sdk/local               local response 403 "denied by NAME", header x-local: NAME
//   /sdk/body                response body becomes "NAME:" + body (buffered; content-length removed)
//   /sdk/ticks               local response 200, body = shared data NAME.ticks ("0" if absent)
//   /sdk/callout             pauses, GETs /callout from upstream "backend", resumes with request
//                            header x-callout: BODY ("failed" if the call failed)
//   on_configure             logs "solo configured: CONFIG" (info), sets a 50 ms tick
//   every tick               NAME.ticks += 1 (get, then set with the cas)
//
// SDK bugs worked around here: its shared-data wrappers pass the wrong pointers (get_shared_data
// uses the value buffer and its length as out-slots, set_shared_data sends an internal reference
// instead of the value), so shared data goes through the SDK's raw imports; RootContext.onConfigure
// passes the configuration size as the out-pointer for the size, so the configuration is read with
// its get_buffer_bytes instead; and it has no set_buffer_bytes, so that import is declared here.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, log, LogLevelValues, WasmResultValues,
  FilterHeadersStatusValues, FilterDataStatusValues, GrpcStatusValues, stream_context,
  send_local_response, HeaderPair, Headers,
} from "@solo-io/proxy-runtime";
import {
  get_buffer_bytes, set_tick_period_milliseconds, BufferTypeValues, Reference,
} from "@solo-io/proxy-runtime/runtime";
import { free } from "@solo-io/proxy-runtime/malloc";
import * as imports from "@solo-io/proxy-runtime/imports";

const NAME = "solo";
const TICKS_KEY = NAME + ".ticks";

// Not in the SDK's imports.
// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function parseDecimal(s: string): u64 {
  let n: u64 = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) break;
    n = n * 10 + <u64>(c - 48);
  }
  return n;
}

class SharedValue {
  found: bool = false;
  value: string = "";
  cas: u32 = 0;
}

let sharedPtr = new Reference<usize>();
let sharedSize = new Reference<usize>();
let sharedCas = new Reference<u32>();

function getShared(key: string): SharedValue {
  const k = String.UTF8.encode(key);
  sharedSize.data = 0;
  const result = imports.proxy_get_shared_data(changetype<usize>(k), k.byteLength,
    sharedPtr.ptr(), sharedSize.ptr(), sharedCas.ptr());
  const out = new SharedValue();
  if (result == WasmResultValues.Ok) {
    out.found = true;
    out.cas = sharedCas.data;
    if (sharedSize.data > 0) {
      out.value = String.UTF8.decodeUnsafe(sharedPtr.data, sharedSize.data);
      free(sharedPtr.data); // the host allocated it with the SDK's malloc
    }
  }
  return out;
}

function setShared(key: string, value: string, cas: u32): u32 {
  const k = String.UTF8.encode(key);
  const v = String.UTF8.encode(value);
  return imports.proxy_set_shared_data(changetype<usize>(k), k.byteLength,
    changetype<usize>(v), v.byteLength, cas);
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
    let config = "";
    if (configuration_size > 0) {
      config = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.PluginConfiguration, 0, configuration_size));
    }
    log(LogLevelValues.info, NAME + " configured: " + config);
    set_tick_period_milliseconds(50);
    return true;
  }

  onTick(): void {
    const current = getShared(TICKS_KEY);
    const next = parseDecimal(current.value) + 1;
    // On CAS_MISMATCH another VM counted this tick's neighbour: the next tick tries again.
    setShared(TICKS_KEY, next.toString(), current.cas);
  }
}

// The callout's answer, on the root context; the SDK has already made the paused stream the
// effective context (proxy_set_effective_context) before calling this.
function onCalloutResponse(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
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
      const extra: Headers = [pair("x-local", NAME)];
      send_local_response(403, "", String.UTF8.encode("denied by " + NAME), extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.path == "/sdk/ticks") {
      const current = getShared(TICKS_KEY);
      const body = current.found && current.value.length > 0 ? current.value : "0";
      send_local_response(200, "", String.UTF8.encode(body), [], GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.path == "/sdk/callout") {
      const callHeaders: Headers = [pair(":method", "GET"), pair(":path", "/callout"), pair(":authority", "backend")];
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
    proxy_set_buffer_bytes(BufferTypeValues.HttpResponseBody, 0, <u32>body_buffer_length,
      changetype<usize>(replaced), replaced.byteLength);
    return FilterDataStatusValues.Continue;
  }
}

// Registered under a name, as published filters are: the host must be told the root id
// (pier: --filter-root-id solo), or this SDK finds no root context and exits.
registerRootContext((context_id: u32): RootContext => { return new SdkRoot(context_id); }, NAME);
