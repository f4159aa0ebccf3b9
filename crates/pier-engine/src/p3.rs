//! WASI 0.3: telling a component that speaks it, linking its interfaces, and running its entry
//! points on the component model's concurrency: `wasi:http/handler@0.3` for one request,
//! `wasi:cli/run@0.3` for a command.
//!
//! A component that speaks 0.3 is compiled for, and runs on, an engine with concurrency support
//! ([`crate::new_engine`]); one that speaks only 0.2 (or a preview1 module) keeps an engine
//! without it, so its calls take wasmtime's direct path, with no event loop per call.
//!
//! A 0.3 call runs inside [`Store::run_concurrent`], which drives the guest's tasks and the
//! streams between host and guest. The response head can come back while the guest still writes
//! its body (from a task of its own, after `handle` returned): the store stays in the loop until
//! every task the guest started has ended and its response body has been handed over to the
//! last frame (its trailers reach the host through the store's own event loop), and is dropped
//! only then.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use wasmparser::{Parser, Payload};
use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};
use wasmtime_wasi_http::p3::bindings::Service;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{FieldMap, WasiBody, WasiHttpView};

use crate::host::HostState;

/// The export a WASI 0.3 HTTP service answers requests through.
pub(crate) const HANDLER: &str = "wasi:http/handler@0.3.";
/// The export of a WASI 0.3 command.
pub(crate) const CLI_RUN: &str = "wasi:cli/run@0.3.";

/// The response head a 0.3 guest hands back, or the error code it answered with instead.
pub type Head = Result<http::Response<WasiBody>, ErrorCode>;

/// Whether `bytes`, a component, imports or exports a WASI 0.3 interface (a name such as
/// `wasi:http/handler@0.3.0`) at its top level: then it needs an engine with concurrency
/// support. Read from the binary before compiling, since the engine decides how it compiles.
/// Anything that does not parse says no (compiling it will say what is wrong).
pub fn speaks_p3(bytes: &[u8]) -> bool {
    let is_p3 = |name: &str| name.starts_with("wasi:") && name.contains("@0.3.");
    // Nested modules and components come inline, each closed by its own `End`.
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return false };
        let names: Vec<&str> = match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                depth += 1;
                continue;
            }
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => {
                depth -= 1;
                continue;
            }
            Payload::ComponentImportSection(imports) if depth == 0 => {
                imports.into_iter().flatten().map(|i| i.name.name).collect()
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                exports.into_iter().flatten().map(|e| e.name.name).collect()
            }
            _ => continue,
        };
        if names.into_iter().any(is_p3) {
            return true;
        }
    }
    false
}

/// Links the WASI 0.3 interfaces: cli, clocks, filesystem, random and sockets (their
/// constructors counted against `--max-sockets`), and `wasi:http`'s types and client (whose
/// requests go through the same outbound hooks as 0.2's).
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p3::add_to_linker(linker)?;
    crate::host::cap_p3_sockets(linker)?;
    wasmtime_wasi_http::p3::add_to_linker(linker)
}

/// Gives `req` to `service`'s `handle` in `store`, sends the response head (or the guest's
/// error code) on `head` as soon as the guest returns it, and goes on driving the guest until
/// every task it started has ended (its response body is written then). An error is a trap, or
/// a failure of the host's side; dropping the future drops the guest mid-call.
///
/// The request keeps its scheme and authority: from its URI (HTTP/2) or, for an origin-form
/// HTTP/1.1 request, its connection's ([`scheme`]) and the `Host` header ([`authority`]).
pub async fn handle<B>(
    store: &mut Store<HostState>,
    service: &Service,
    req: http::Request<B>,
    head: oneshot::Sender<Head>,
) -> wasmtime::Result<()>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let authority = authority(&req);
    let scheme = scheme(&req);
    let (parts, body) = req.into_parts();
    let headers = FieldMap::new_immutable(store.data_mut().http().hooks, parts.headers);
    let (request, io) = wasmtime_wasi_http::p3::Request::new(
        parts.method,
        Some(scheme),
        authority,
        parts.uri.path_and_query().cloned(),
        headers,
        None,
        body,
    );
    store
        .run_concurrent(async move |guest| -> wasmtime::Result<()> {
            match service.handle(guest, request).await? {
                Ok(response) => {
                    let response = guest.with(|mut store| response.into_http(&mut store, io))?;
                    let (parts, body) = response.into_parts();
                    let (tx, relayed) = Relayed::new(http_body::Body::size_hint(&body));
                    let _ = head.send(Ok(http::Response::from_parts(
                        parts,
                        relayed.boxed_unsync(),
                    )));
                    let tasks = std::future::poll_fn(|cx| guest.poll_no_interesting_tasks(cx));
                    tokio::join!(relay(body, tx), tasks);
                }
                Err(code) => {
                    let _ = head.send(Err(code));
                    std::future::poll_fn(|cx| guest.poll_no_interesting_tasks(cx)).await;
                }
            }
            Ok(())
        })
        .await?
}

/// How many frames of a 0.3 guest's response body wait for the client. A body written in a few
/// chunks is all there when the guest ends (and goes out whole, with its length); a longer one
/// holds the guest's writes back until the client takes it.
const RELAYED_FRAMES: usize = 4;

/// A frame of a relayed body, or its error.
type RelayedFrame = Result<Frame<Bytes>, wasmtime_wasi_http::Error>;

/// Hands `body`'s frames to `tx` until its last one (trailers, an error or its end), or until
/// the client is gone: run inside the store's event loop, which the guest's body, and its
/// trailers future in particular, need to reach the host. (Dropping the store earlier would
/// drop trailers still on their way: a guest answering with the request's own trailers, once
/// it has read the request body, has already ended by then.)
async fn relay(mut body: WasiBody, tx: mpsc::Sender<RelayedFrame>) {
    loop {
        let Ok(room) = tx.reserve().await else {
            return;
        };
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tx.closed() => return,
        };
        let Some(frame) = frame else { return };
        let last = frame.as_ref().map_or(true, Frame::is_trailers);
        room.send(frame);
        if last {
            return;
        }
    }
}

/// A 0.3 guest's response body as the client takes it: the frames [`relay`] hands over.
struct Relayed {
    frames: mpsc::Receiver<RelayedFrame>,
    /// What is left of the body's length, when the guest gave one.
    left: Option<u64>,
}

impl Relayed {
    fn new(size: SizeHint) -> (mpsc::Sender<RelayedFrame>, Self) {
        let (tx, frames) = mpsc::channel(RELAYED_FRAMES);
        (
            tx,
            Relayed {
                frames,
                left: size.exact(),
            },
        )
    }
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RelayedFrame>> {
        let frame = std::task::ready!(self.frames.poll_recv(cx));
        if let (Some(Ok(frame)), Some(left)) = (&frame, &mut self.left) {
            let sent = frame.data_ref().map_or(0, |d| d.len() as u64);
            *left = left.saturating_sub(sent);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_closed() && self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.left
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A request's scheme: its URI's (an HTTP/2 request's `:scheme`), else the one the server put
/// in its extensions (`https` for an HTTP/1.1 request over TLS), else `http`.
pub fn scheme<B>(req: &http::Request<B>) -> Scheme {
    req.uri()
        .scheme()
        .or_else(|| req.extensions().get::<Scheme>())
        .cloned()
        .unwrap_or(Scheme::HTTP)
}

/// A request's authority: its URI's, or the `Host` header's when that parses as an authority
/// and nothing more (a header reaching into the path, `x/admin?`, gives none).
pub fn authority<B>(req: &http::Request<B>) -> Option<Authority> {
    req.uri().authority().cloned().or_else(|| {
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        host.parse::<Authority>().ok()
    })
}

/// Runs a WASI 0.3 command's `run` in `store` to its end: `Ok(Err(()))` is the guest's own
/// error result (exit code 1), an `Err` a trap or `wasi:cli/exit`.
pub(crate) async fn run(
    store: &mut Store<HostState>,
    pre: InstancePre<HostState>,
) -> wasmtime::Result<Result<(), ()>> {
    let command = wasmtime_wasi::p3::bindings::CommandPre::new(pre)?
        .instantiate_async(&mut *store)
        .await?;
    store
        .run_concurrent(async |guest| command.wasi_cli_run().call_run(guest).await)
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn a_component_speaks_p3_when_its_own_imports_or_exports_name_0_3() {
        let imports_p3 =
            component(r#"(component (import "wasi:clocks/monotonic-clock@0.3.0" (instance)))"#);
        assert!(speaks_p3(&imports_p3));
        let exports_p3 = component(
            r#"(component (instance $i) (export "wasi:http/handler@0.3.0" (instance $i)))"#,
        );
        assert!(speaks_p3(&exports_p3));
        let p2 = component(
            r#"(component
                 (import "wasi:io/streams@0.2.4" (instance))
                 (instance $i) (export "wasi:cli/run@0.2.0" (instance $i)))"#,
        );
        assert!(!speaks_p3(&p2));
        // A name inside a nested component is that component's, not the outer one's.
        let nested =
            component(r#"(component (component (import "wasi:cli/stdin@0.3.0" (instance))))"#);
        assert!(!speaks_p3(&nested));
        assert!(!speaks_p3(b"\0asm\x0d\0\x01\0garbage"));
    }
}
