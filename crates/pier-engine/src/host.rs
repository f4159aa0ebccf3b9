//! The per-store host state: what one guest instance can reach.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pier_config::DirGrant;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// State of one store: the WASI context, the HTTP context and the resource table they share,
/// and the store's resource limits.
pub struct HostState {
    wasi: Wasi,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    pub(crate) limits: StoreLimits,
    /// When the guest must stop: set when a request is given to the store (`None` while the
    /// instance waits, made ahead of its request).
    pub(crate) deadline: Option<std::time::Instant>,
    /// Set only for the reset hint's call after a request; taken by the hint's host function
    /// (`crate::dirty`).
    pub(crate) reset_hint: bool,
    /// What that call joined.
    pub(crate) joined: Option<crate::dirty::Joined>,
}

impl HostState {
    /// A state around a built WASI context, with no limits of its own, sending its outgoing
    /// HTTP requests through `outbound`.
    pub fn new(wasi: WasiCtx, outbound: Arc<dyn Outbound>) -> Self {
        Self::with(Wasi::Built(wasi), outbound)
    }

    /// A state whose WASI context is built from `recipe` when the guest first calls a WASI
    /// function that needs it (`wasi:io` and `wasi:http` do not).
    pub(crate) fn deferred(recipe: Arc<WasiRecipe>, outbound: Arc<dyn Outbound>) -> Self {
        Self::with(Wasi::Deferred(recipe), outbound)
    }

    fn with(wasi: Wasi, outbound: Arc<dyn Outbound>) -> Self {
        HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks(outbound),
            limits: StoreLimits::default(),
            deadline: None,
            reset_hint: false,
            joined: None,
        }
    }

    /// The resource table, without building the WASI context (what `wasi:io` needs).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Whether the WASI context has been built.
    #[cfg(test)]
    pub(crate) fn wasi_is_built(&self) -> bool {
        matches!(self.wasi, Wasi::Built(_))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        if let Wasi::Deferred(recipe) = &self.wasi {
            self.wasi = Wasi::Built(recipe.build());
        }
        let Wasi::Built(ctx) = &mut self.wasi else {
            unreachable!("built just above")
        };
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

/// A store's WASI context, or what it is built from.
#[expect(
    clippy::large_enum_variant,
    reason = "it lives in the store's host state, allocated once either way; boxing the context would add an allocation"
)]
enum Wasi {
    Built(WasiCtx),
    /// Not built yet. Many guests never call the interfaces that need it (a WAT or wit-bindgen
    /// handler that only speaks `wasi:http`), and building one is a fair share of a small
    /// request: two random generators seeded, a dozen allocations, and an `open` per `--dir`.
    Deferred(Arc<WasiRecipe>),
}

/// What a served guest's WASI context holds: only the granted environment and directories, its
/// stdout and stderr to the log, no arguments, no stdin, no network.
#[derive(Debug)]
pub(crate) struct WasiRecipe {
    /// The component's name, tagging its output in the log.
    pub(crate) component: Arc<str>,
    /// Environment variables, already resolved.
    pub(crate) env: Vec<(String, String)>,
    /// Directories to preopen.
    pub(crate) dirs: Vec<DirGrant>,
}

impl WasiRecipe {
    /// A fresh context. A directory that can no longer be opened (checked when the app was
    /// loaded, removed since) is left out, and the log says so: the guest sees no such
    /// preopen, as if it had not been granted.
    pub(crate) fn build(&self) -> WasiCtx {
        let mut wasi = WasiCtx::builder();
        wasi.envs(&self.env)
            .stdout(GuestLog::new(self.component.clone(), "stdout"))
            .stderr(GuestLog::new(self.component.clone(), "stderr"));
        for dir in &self.dirs {
            if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite) {
                tracing::error!(
                    component = &*self.component,
                    "--dir {}: cannot open the directory, left out of this instance: {e:#}",
                    dir.host.display()
                );
            }
        }
        wasi.build()
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Sends a guest's outgoing HTTP requests. pier's pooled, policy-checking client implements it
/// (in pier-http); one instance is shared by every store of an app.
pub trait Outbound: Send + Sync + 'static {
    /// Sends `request` (absolute URI, body streaming from the guest), honouring the guest's
    /// `options` within the host's limits.
    fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send,
        >,
    >;
}

/// Refuses every outgoing request: what a guest gets when nothing was granted.
pub struct DenyAll;

impl Outbound for DenyAll {
    fn send(
        &self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<http::Response<WasiBody>, wasmtime_wasi_http::Error>> + Send,
        >,
    > {
        tracing::warn!(uri = %request.uri(), "outgoing request denied: no --allow-outbound pattern was given");
        Box::pin(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Header names a guest may not set on an outgoing request (RFC 9110 connection-specific
/// fields, proxy fields, and `host`, which pier derives from the URL).
const FORBIDDEN: [http::HeaderName; 10] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::TE,
    http::header::HOST,
    http::HeaderName::from_static("http2-settings"),
];

/// wasmtime-wasi-http's hooks, routed to the app's [`Outbound`].
struct OutboundHooks(Arc<dyn Outbound>);

impl WasiHttpHooks for OutboundHooks {
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(|name| FORBIDDEN.contains(name))
    }

    /// The client sets `Host` from the URL's authority, without a default port.
    fn set_host_header(&mut self) -> bool {
        false
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        let sent = self.0.send(request, options);
        Box::new(async move {
            let response = sent.await?;
            // The pooled client drives its connections itself: no per-request I/O future.
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Longest line kept before it is logged without its newline, so a guest cannot grow the buffer
/// without bound.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr, sent to pier's log one line per event, tagged with the component.
#[derive(Clone)]
pub struct GuestLog(Arc<GuestLogInner>);

struct GuestLogInner {
    component: Arc<str>,
    stream: &'static str,
    pending: Mutex<Vec<u8>>,
}

impl GuestLog {
    /// A log sink for `component`'s `stream` ("stdout" or "stderr").
    pub fn new(component: Arc<str>, stream: &'static str) -> Self {
        GuestLog(Arc::new(GuestLogInner {
            component,
            stream,
            pending: Mutex::new(Vec::new()),
        }))
    }
}

impl GuestLogInner {
    fn write(&self, mut bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&bytes[..newline]);
            self.emit(&pending);
            pending.clear();
            bytes = &bytes[newline + 1..];
        }
        pending.extend_from_slice(bytes);
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            self.emit(&pending);
            *pending = rest;
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        tracing::info!(target: "pier::guest", component = &*self.component, stream = self.stream, "{line}");
    }
}

impl Drop for GuestLogInner {
    fn drop(&mut self) {
        let pending = std::mem::take(self.pending.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !pending.is_empty() {
            self.emit(&pending);
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
