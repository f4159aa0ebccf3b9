//! pier's HTTP side: the server, and the handlers that answer requests.

mod body;
mod handler;
mod server;

pub use body::{BodyError, ResponseBody, error_response};
pub use server::{DRAIN_TIMEOUT, ServeError, Server};
