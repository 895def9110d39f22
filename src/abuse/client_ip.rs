//! The client address behind trusted proxies (`X-Forwarded-For`).
//!
//! Each proxy appends the address it got the request from, so the entries
//! on the right were written by the proxies nearest to us and those on the
//! left by whoever sent the request first, the client included: anything a
//! client writes there itself ends up on the left. So the header is only
//! read when the peer is a trusted proxy, and read from the right: trusted
//! proxies are skipped, and the first address that is not one is the
//! client. Addresses further left cannot be checked and are never used.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header trusted proxies fill in.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client address of a request from `peer` (see the module docs).
pub(super) fn resolve(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(trusted, peer) {
        return peer;
    }
    // Several header lines are one list, in order.
    let mut leftmost = None;
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return peer;
        };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return peer;
            };
            if !is_trusted(trusted, ip) {
                return ip;
            }
            leftmost = Some(ip);
        }
    }
    // Every hop is a trusted proxy: the first of them sent the request.
    leftmost.unwrap_or(peer)
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// One entry of the list: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`) or in brackets (`[::1]`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok())?;
    Some(ip.to_canonical())
}
