//! HTTPS for the facade (ADR 0028): an axum listener over the TLS connections the platform's
//! acceptor completes (TLS 1.3 only, certificate reloaded when its files change), and the peer
//! address of a connection, plain or TLS, for [`crate::middleware::client_address`].
use std::net::SocketAddr;

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use thali_platform::tls::Accepted;
use tokio::{net::TcpListener, sync::mpsc};

/// The socket peer of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// TLS connections, handshakes done.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<Accepted>,
}

impl TlsListener {
    /// Serves TLS on `listener` with `config` (see `thali_platform::tls::server_config`).
    pub fn new(listener: TcpListener, config: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            local,
            accepted: thali_platform::tls::spawn_acceptor(listener, config, "http"),
        })
    }
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor only stops when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
