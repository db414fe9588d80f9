//! Listening sockets.
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel may queue per listener (further capped by
/// `net.core.somaxconn`). Tokio's default of 1024 drops connection bursts such as 10,000 clients
/// arriving at once; dropped SYNs come back only after a 1 s, 3 s, 7 s retransmit.
pub const BACKLOG: u32 = 8192;

/// Binds `addr` with [`BACKLOG`] and address reuse.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn binds_an_ephemeral_port() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
