//! UDP sockets for QUIC endpoints with enlarged kernel buffers.
//!
//! Default socket buffers (about 200 KiB) overflow when thousands of
//! clients send at once, and every dropped datagram costs a QUIC
//! retransmission timeout. The kernel caps the request at
//! `net.core.rmem_max` / `wmem_max`.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a UDP socket on `addr` asking for `buffer_bytes` of receive and
/// send buffer (best effort: the kernel may grant less).
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too on "[::]:port"; ignored where unsupported.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on a socket from [`bind`].
pub fn endpoint(
    addr: SocketAddr,
    buffer_bytes: usize,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = bind(addr, buffer_bytes)?;
    let runtime: Arc<dyn quinn::Runtime> = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for quinn"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}
