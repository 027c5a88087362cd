//! The one way to open a QUIC endpoint: a UDP socket with enlarged kernel
//! buffers, then quinn on it.
//!
//! QUIC moves every packet through the socket buffers, and the kernel's
//! default (about 200 KiB) overflows when thousands of clients send at
//! once or a viewer receives several transfers: every dropped datagram
//! costs a retransmission timeout, which showed up as multi-second stalls
//! (BENCHMARKS.md). The kernel caps the request at `net.core.rmem_max` /
//! `wmem_max`.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for by [`bind_endpoint`].
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket on `address` asking for `buffer_bytes` of receive and
/// send buffer (best effort: the kernel may grant less). On `[::]:port` it
/// accepts IPv4 too where the system allows.
pub fn bind_udp(address: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on `address` with [`SOCKET_BUFFER_BYTES`] buffers: a
/// server when `server` is given (it can connect out too), else a client.
/// Must be called within a tokio runtime.
pub fn bind_endpoint(
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    bind_endpoint_with_buffers(address, server, SOCKET_BUFFER_BYTES)
}

/// [`bind_endpoint`] with another buffer size.
pub fn bind_endpoint_with_buffers(
    address: SocketAddr,
    server: Option<quinn::ServerConfig>,
    buffer_bytes: usize,
) -> std::io::Result<quinn::Endpoint> {
    let socket = bind_udp(address, buffer_bytes)?;
    let runtime: Arc<dyn quinn::Runtime> = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}
