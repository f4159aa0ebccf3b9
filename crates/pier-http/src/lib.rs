//! pier's HTTP side: the server, the request path, and the handlers that answer requests.

pub mod admin;
mod app;
mod body;
mod callouts;
mod conn;
mod files;
mod filters;
mod h2_guard;
pub mod handler;
mod limits;
pub mod metrics;
mod middleware;
mod outbound;
mod refusals;
pub mod reload;
mod router;
mod self_calls;
mod server;
mod service;
mod tls;
mod upstream;

pub use app::{Built, Checked, build, check, open_store, run};
pub use body::{BodyError, ResponseBody, error_response};
pub use callouts::NamedUpstreams;
pub use files::Files;
pub use filters::{FilterChain, FilterSettings};
pub use middleware::Chain;
pub use outbound::{CaError, OutboundClient};
pub use reload::{Live, Triggers};
pub use router::{PATH_INFO_HEADER, ROUTE_HEADER};
pub use self_calls::{SelfCalls, SelfRoutes};
pub use server::{Listen, Routed, Routes, ServeError, Server, SharedPort};
pub use service::Handler;
pub use tls::{TlsError, acceptor as tls_acceptor};
pub use upstream::Upstream;
