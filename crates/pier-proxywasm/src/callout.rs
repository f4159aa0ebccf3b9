//! HTTP callouts: `proxy_http_call` to a named upstream (`--filter-upstream NAME=URL`), sent by
//! the host's pooled client; the reply comes back in `proxy_on_http_call_response` on the
//! calling VM's root context. gRPC calls are answered UNIMPLEMENTED.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wasmtime::{Caller, Linker};

use crate::Pairs;
use crate::memory::{give, read, write_u32};
use crate::pairs;
use crate::pool::Entered;
use crate::status::{Status, code};
use crate::vm::{Home, VmState};

/// The timeout of a call that asks for none (0), and the most any call may ask for.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most HTTP calls one VM may wait for at once.
const MAX_IN_FLIGHT: u32 = 1024;
/// The largest callout response body handed to a filter.
pub const MAX_REPLY_BODY: usize = 16 << 20;

/// A request a filter makes.
#[derive(Debug)]
pub struct CalloutRequest {
    /// The upstream's name.
    pub upstream: String,
    /// Headers with `:method`, `:path` and `:authority`.
    pub headers: Pairs,
    /// The body.
    pub body: Vec<u8>,
    /// Trailers (sent when not empty).
    pub trailers: Pairs,
    /// How long the whole call may take.
    pub timeout: Duration,
}

/// The answer to a callout.
#[derive(Debug, Default, Clone)]
pub struct CalloutReply {
    /// Headers, `:status` first; empty when the call failed.
    pub headers: Pairs,
    /// The body.
    pub body: Vec<u8>,
    /// Trailers.
    pub trailers: Pairs,
}

impl CalloutReply {
    fn status(&self) -> Option<u32> {
        let (_, v) = self.headers.iter().find(|(k, _)| k == b":status")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    }
}

/// Sends callouts: the server's implementation knows the named upstreams and owns the client.
pub trait Callouts: Send + Sync {
    /// Whether `upstream` names a configured upstream.
    fn knows(&self, upstream: &str) -> bool;
    /// Sends the request; an error is logged and reported to the filter as a failed call.
    fn call(
        &self,
        request: CalloutRequest,
    ) -> Pin<Box<dyn Future<Output = Result<CalloutReply, String>> + Send>>;
}

fn has(pairs: &Pairs, name: &[u8]) -> bool {
    pairs.iter().any(|(k, v)| k == name && !v.is_empty())
}

fn map(c: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Pairs, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let bytes = read(c, ptr, len)?;
    pairs::deserialize(&bytes).ok_or(Status::ParseFailure)
}

/// Adds `proxy_http_call` and `proxy_get_status` (gRPC calls are in `hostcalls::unimplemented`).
pub fn link(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, VmState>,
         up: i32,
         up_len: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         tp: i32,
         tl: i32,
         timeout: i32,
         ret: i32|
         -> i32 {
            code((|| {
                let upstream = String::from_utf8(read(&mut c, up, up_len)?)
                    .map_err(|_| Status::BadArgument)?;
                let callouts = c.data().code.callouts.clone();
                let callouts = callouts
                    .filter(|cs| cs.knows(&upstream))
                    .ok_or(Status::BadArgument)?;
                let headers = map(&mut c, hp, hl)?;
                if ![&b":method"[..], b":path", b":authority"]
                    .iter()
                    .all(|name| has(&headers, name))
                {
                    return Err(Status::BadArgument);
                }
                let body = read(&mut c, bp, bl)?;
                let trailers = map(&mut c, tp, tl)?;
                let timeout = match timeout as u32 {
                    0 => DEFAULT_TIMEOUT,
                    ms => Duration::from_millis(ms.into()).min(DEFAULT_TIMEOUT),
                };
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| Status::InternalFailure)?;
                let state = c.data_mut();
                if state.calls_in_flight >= MAX_IN_FLIGHT {
                    return Err(Status::InternalFailure);
                }
                state.calls_in_flight += 1;
                state.next_call = state.next_call.wrapping_add(1).max(1);
                let id = state.next_call;
                let home = state.home.clone();
                let (name, root) = (state.root().name.clone(), state.root().context);
                if let Err(status) = write_u32(&mut c, ret, id) {
                    c.data_mut().calls_in_flight -= 1;
                    return Err(status);
                }
                let request = CalloutRequest {
                    upstream,
                    headers,
                    body,
                    trailers,
                    timeout,
                };
                let sent = callouts.call(request);
                runtime.spawn(async move {
                    let reply = match tokio::time::timeout(timeout, sent).await {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(e)) => {
                            tracing::warn!(filter = &*name, "HTTP call {id} failed: {e}");
                            CalloutReply::default()
                        }
                        Err(_) => {
                            tracing::warn!(
                                filter = &*name,
                                "HTTP call {id} timed out after {timeout:?}"
                            );
                            CalloutReply::default()
                        }
                    };
                    deliver(home, root, id, reply);
                });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Caller<'_, VmState>, ret_code: i32, ret_ptr: i32, ret_len: i32| -> i32 {
            code((|| {
                let status = c
                    .data()
                    .callout
                    .as_ref()
                    .map(|r| r.status().unwrap_or(0))
                    .ok_or(Status::NotFound)?;
                write_u32(&mut c, ret_code, status)?;
                give(&mut c, b"", ret_ptr, ret_len)
            })())
        },
    )?;
    Ok(())
}

/// Hands `reply` to the VM that made call `id`, if it is still the same VM, on the root context
/// of the plugin that made it.
fn deliver(home: Home, root: i32, id: u32, mut reply: CalloutReply) {
    let Some(slot) = home.slot.upgrade() else {
        return;
    };
    reply.body.truncate(MAX_REPLY_BODY);
    let _: Entered<()> = slot.enter(Some(home.generation), move |vm, _| {
        vm.state().calls_in_flight = vm.state().calls_in_flight.saturating_sub(1);
        if !vm.has("proxy_on_http_call_response") {
            return Ok(());
        }
        let counts = (
            reply.headers.len() as i32,
            reply.body.len() as i32,
            reply.trailers.len() as i32,
        );
        vm.state().callout = Some(reply);
        let result = vm.call::<(i32, i32, i32, i32, i32), ()>(
            root,
            "proxy_on_http_call_response",
            (root, id as i32, counts.0, counts.1, counts.2),
        );
        vm.state().callout = None;
        result
    });
}
