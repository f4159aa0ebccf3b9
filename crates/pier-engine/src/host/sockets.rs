//! `wasi:sockets` (0.2 and 0.3 alike): what a component's [`SocketPolicy`] lets its guests
//! reach. wasmtime's implementation asks before every bind, listen, accept, connect, send and
//! receive; pier answers from the policy, looking up the host names grants name at that moment
//! (so a grant follows its name's current addresses), and logs each refusal once with the grant
//! that would allow it. A socket lives in its instance's resource table and closes with it; the
//! constructors count what is open there against `--max-sockets` ([`CappedSockets`] for 0.2,
//! [`cap_p3`] for 0.3).
//!
//! Nothing granted: wasmtime's defaults stand, and a guest cannot make a socket at all.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use pier_config::{SocketPolicy, SocketUse};
use wasmtime::component::Resource;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketError, SocketResult, TcpSocket as P2Tcp, UdpSocket as P2Udp};
use wasmtime_wasi::sockets::{
    SocketAddrUse, TcpSocket as P3Tcp, UdpSocket as P3Udp, WasiSocketsCtxView,
};

use super::HostState;

/// `wasi:sockets` 0.2's `create-tcp-socket` and `create-udp-socket`, which refuse a socket past
/// `--max-sockets` open ones with `new-socket-limit` (what the OS's own limit would say), and
/// otherwise are wasmtime's.
pub(crate) struct CappedSockets;

impl wasmtime::component::HasData for CappedSockets {
    type Data<'a> = Capped<'a>;
}

/// The socket constructors' view of a store: wasmtime's, and the cap.
pub(crate) struct Capped<'a> {
    view: WasiSocketsCtxView<'a>,
    max: usize,
}

impl<'a> Capped<'a> {
    pub(crate) fn new(view: WasiSocketsCtxView<'a>, max: usize) -> Self {
        Capped { view, max }
    }

    /// Refuses a new socket when the guest has `max` open (counted in its resource table, so
    /// a socket dropped is one less at once).
    fn check(&mut self) -> SocketResult<()> {
        if at_cap(self.view.table, self.max) {
            return Err(ErrorCode::NewSocketLimit.into());
        }
        Ok(())
    }
}

/// Whether the guest whose table this is has `max` sockets open (0.2's or 0.3's).
fn at_cap(table: &mut wasmtime::component::ResourceTable, max: usize) -> bool {
    if max == usize::MAX {
        return false;
    }
    let open = table
        .iter_mut()
        .filter(|entry| {
            entry.is::<P2Tcp>() || entry.is::<P2Udp>() || entry.is::<P3Tcp>() || entry.is::<P3Udp>()
        })
        .count();
    if open >= max {
        tracing::debug!("a guest has {open} sockets open: new-socket-limit (--max-sockets)");
    }
    open >= max
}

/// WASI 0.3 has no `new-socket-limit`: its `other`, saying which limit.
fn p3_limit() -> wasmtime_wasi::p3::bindings::sockets::types::ErrorCode {
    wasmtime_wasi::p3::bindings::sockets::types::ErrorCode::Other(Some(
        "new-socket-limit: the instance has as many sockets open as it may (--max-sockets)".into(),
    ))
}

/// WASI 0.3's socket constructors (`[static]tcp-socket.create`, `[static]udp-socket.create`)
/// linked again over wasmtime's, counting as 0.2's do: past `--max-sockets` open ones, a new
/// socket is refused ([`p3_limit`]).
pub(crate) fn cap_p3(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p3::bindings::sockets::types::{
        self as p3, HostTcpSocket, HostUdpSocket, IpAddressFamily as P3Family,
    };
    use wasmtime_wasi::sockets::WasiSocketsView;
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:sockets/types@0.3.0")?;
    types.func_wrap(
        "[static]tcp-socket.create",
        |mut store: wasmtime::StoreContextMut<'_, HostState>, (family,): (P3Family,)| {
            let state = store.data_mut();
            let max = state.max_sockets;
            let mut view = state.sockets();
            if at_cap(view.table, max) {
                return Ok((Err(p3_limit()),));
            }
            Ok((match HostTcpSocket::create(&mut view, family) {
                Ok(socket) => Ok(socket),
                Err(e) => Err(p3::Host::convert_error_code(&mut view, e)?),
            },))
        },
    )?;
    types.func_wrap_async(
        "[static]udp-socket.create",
        |mut store: wasmtime::StoreContextMut<'_, HostState>, (family,): (P3Family,)| {
            Box::new(async move {
                let state = store.data_mut();
                let max = state.max_sockets;
                let mut view = state.sockets();
                if at_cap(view.table, max) {
                    return Ok((Err(p3_limit()),));
                }
                Ok((match HostUdpSocket::create(&mut view, family).await {
                    Ok(socket) => Ok(socket),
                    Err(e) => Err(p3::Host::convert_error_code(&mut view, e)?),
                },))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl network::Host for Capped<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.view, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi_io::streams::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.view, err)
    }
}

impl network::HostNetwork for Capped<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.view, this)
    }
}

impl tcp_create_socket::Host for Capped<'_> {
    fn create_tcp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<P2Tcp>> {
        self.check()?;
        tcp_create_socket::Host::create_tcp_socket(&mut self.view, address_family)
    }
}

impl udp_create_socket::Host for Capped<'_> {
    async fn create_udp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<P2Udp>> {
        self.check()?;
        udp_create_socket::Host::create_udp_socket(&mut self.view, address_family).await
    }
}

/// Grants `builder`'s guest what `policy` allows; refusals are logged under `component`.
pub(crate) fn grant(
    builder: &mut WasiCtxBuilder,
    policy: &Arc<SocketPolicy>,
    component: &Arc<str>,
) {
    if policy.is_empty() {
        return;
    }
    builder
        .allow_tcp(policy.tcp())
        .allow_udp(policy.udp())
        .allow_ip_name_lookup(policy.ip_name_lookup());
    let policy = policy.clone();
    let component = component.clone();
    builder.socket_addr_check(move |addr, used| {
        let policy = policy.clone();
        let component = component.clone();
        Box::pin(async move { allowed(&policy, &component, addr, used).await })
    });
}

/// Whether `policy` allows `used` with `addr`.
async fn allowed(
    policy: &SocketPolicy,
    component: &str,
    addr: SocketAddr,
    used: SocketAddrUse,
) -> bool {
    let what = match used {
        SocketAddrUse::TcpBind => return verdict(component, used, policy.check_bind(true, addr)),
        SocketAddrUse::UdpBind => return verdict(component, used, policy.check_bind(false, addr)),
        // Listening was checked; every client of a granted listener may connect.
        SocketAddrUse::TcpAccept => return true,
        SocketAddrUse::TcpListen => SocketUse::TcpListen,
        SocketAddrUse::TcpConnect => SocketUse::TcpConnect,
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => SocketUse::Udp,
    };
    let mut checked = policy.check(what, addr, |_| Vec::new());
    // Names are looked up for what the guest does, not for every datagram any peer sends it.
    let receive = matches!(used, SocketAddrUse::UdpReceive);
    if checked.is_err() && !receive && policy.names().next().is_some() {
        let resolved = resolve(policy.names()).await;
        checked = policy.check(what, addr, |name| {
            resolved.get(name).cloned().unwrap_or_default()
        });
    }
    verdict(component, used, checked)
}

fn verdict(
    component: &str,
    used: SocketAddrUse,
    checked: Result<(), pier_config::SocketDenied>,
) -> bool {
    match checked {
        Ok(()) => true,
        // A datagram from a peer no grant names is dropped; saying so for each one would let
        // any sender fill the log.
        Err(denied) if matches!(used, SocketAddrUse::UdpReceive) => {
            tracing::debug!(component, "{denied}");
            false
        }
        Err(denied) => {
            crate::warn_denied(&format!("component {component}: {denied}"));
            false
        }
    }
}

/// The addresses each name has now (none for a name that does not resolve).
async fn resolve<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<String, Vec<IpAddr>> {
    let mut resolved = HashMap::new();
    for name in names {
        let addrs = match tokio::net::lookup_host((name, 0)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            Err(e) => {
                tracing::debug!("socket grant {name}: cannot resolve: {e}");
                Vec::new()
            }
        };
        resolved.insert(name.to_string(), addrs);
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(grants: &[&str]) -> SocketPolicy {
        SocketPolicy::new(vec![], grants.iter().map(|g| g.parse().unwrap()).collect())
    }

    #[tokio::test]
    async fn each_use_wasmtime_asks_about_maps_to_the_grant_for_it() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let connect = policy(&["tcp-connect:localhost:5432"]);
        // A connect: the implicit bind, then the address.
        assert!(allowed(&connect, "t", addr("0.0.0.0:0"), SocketAddrUse::TcpBind).await);
        assert!(
            allowed(
                &connect,
                "t",
                addr("127.0.0.1:5432"),
                SocketAddrUse::TcpConnect
            )
            .await
        );
        assert!(
            !allowed(
                &connect,
                "t",
                addr("127.0.0.1:5433"),
                SocketAddrUse::TcpConnect
            )
            .await
        );
        // No listening on the strength of a grant to connect.
        assert!(!allowed(&connect, "t", addr("0.0.0.0:0"), SocketAddrUse::TcpListen).await);
        assert!(!allowed(&connect, "t", addr("0.0.0.0:0"), SocketAddrUse::UdpBind).await);
        // A name that does not resolve grants nothing (the policy's tests cover names that do).
        let nowhere = policy(&["tcp-connect:no-such-host.invalid:80"]);
        assert!(
            !allowed(
                &nowhere,
                "t",
                addr("203.0.113.1:80"),
                SocketAddrUse::TcpConnect
            )
            .await
        );
        let udp = policy(&["udp:127.0.0.1:53"]);
        assert!(allowed(&udp, "t", addr("0.0.0.0:0"), SocketAddrUse::UdpBind).await);
        assert!(allowed(&udp, "t", addr("127.0.0.1:53"), SocketAddrUse::UdpSend).await);
        assert!(allowed(&udp, "t", addr("127.0.0.1:53"), SocketAddrUse::UdpReceive).await);
        assert!(!allowed(&udp, "t", addr("127.0.0.2:53"), SocketAddrUse::UdpReceive).await);
    }
}
