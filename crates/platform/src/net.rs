//! Listening sockets, and who a request comes from.
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

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

/// The proxies (load balancers, ingress) whose `X-Forwarded-For` is believed
/// (`THALI_TRUSTED_PROXIES`: comma-separated addresses or CIDRs).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8, 192.168.1.7, fd00::/8`; an empty list trusts nobody.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("`{part}` is neither an address nor a CIDR")),
                },
            };
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted proxy; then the
    /// rightmost address of `X-Forwarded-For` (all its lines, in order) that is not a trusted
    /// proxy. Entries left of that one were written by the client and are never believed. An
    /// entry that is not an address ends the walk at the last trusted hop.
    pub fn client_ip<'a>(&self, peer: IpAddr, forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for line in forwarded_for.rev() {
            let Ok(line) = std::str::from_utf8(line) else {
                return client;
            };
            for entry in line.rsplit(',') {
                let Some(ip) = parse_forwarded(entry.trim()) else {
                    return client;
                };
                client = ip;
                if !self.trusts(ip) {
                    return ip;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, or an address with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4, so one client has one address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff<'a>(lines: &'a [&'a str]) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        lines.iter().map(|l| l.as_bytes())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            proxies.client_ip(peer, xff(&["1.1.1.1"])),
            peer,
            "spoofed header ignored"
        );
        let nobody = TrustedProxies::default();
        assert_eq!(
            nobody
                .client_ip("10.0.0.1".parse().unwrap(), xff(&["1.1.1.1"]))
                .to_string(),
            "10.0.0.1"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let proxies = TrustedProxies::parse(" 10.0.0.0/8 , 192.168.1.7,fd00::/8").unwrap();
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        // The client claims 6.6.6.6; the edge proxy appended the real 198.51.100.4; an inner
        // proxy appended the edge's address.
        let got = proxies.client_ip(lb, xff(&["6.6.6.6, 198.51.100.4", "192.168.1.7"]));
        assert_eq!(got.to_string(), "198.51.100.4");
        let got = proxies.client_ip(lb, xff(&["[2001:db8::1]:443", "10.9.9.9:80"]));
        assert_eq!(got.to_string(), "2001:db8::1");
        // Every hop trusted: the leftmost is the best there is.
        assert_eq!(proxies.client_ip(lb, xff(&["10.0.0.5"])).to_string(), "10.0.0.5");
        // No header: the proxy itself.
        assert_eq!(proxies.client_ip(lb, xff(&[])), lb);
        // Garbage stops the walk at the last trusted hop, never believing what is left of it.
        assert_eq!(proxies.client_ip(lb, xff(&["1.2.3.4, junk"])), lb);
        assert_eq!(
            proxies.client_ip(lb, xff(&["1.2.3.4, junk, 10.0.0.6"])).to_string(),
            "10.0.0.6"
        );
        // An IPv4-mapped peer is the IPv4 one.
        assert_eq!(
            proxies
                .client_ip("::ffff:10.1.2.3".parse().unwrap(), xff(&["8.8.8.8"]))
                .to_string(),
            "8.8.8.8"
        );
    }

    #[test]
    fn bad_proxy_lists_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("loadbalancer").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn binds_an_ephemeral_port() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
