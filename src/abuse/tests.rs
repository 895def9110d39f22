use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use super::*;
use crate::config::AbuseConfig;
use crate::error::Code;

/// Every limit off, then `f` applied.
fn cfg(f: impl FnOnce(&mut AbuseConfig)) -> AbuseConfig {
    let mut c = AbuseConfig {
        connect_rate_per_ip: 0,
        connect_burst_per_ip: 0,
        connect_rate_global: 0,
        connect_burst_global: 0,
        max_connections_per_ip: 0,
        max_connections_per_user: 0,
        publish_rate_per_connection: 0,
        publish_burst_per_connection: 0,
        ephemeral_rate_per_connection: 0,
        ephemeral_burst_per_connection: 0,
        trusted_proxies: Vec::new(),
        exempt: Vec::new(),
    };
    f(&mut c);
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer(s: &str) -> SocketAddr {
    SocketAddr::new(ip(s), 40000)
}

fn xff(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    }
    h
}

fn proxies(list: &[&str]) -> Abuse {
    Abuse::new(&cfg(|c| c.trusted_proxies = list.iter().map(|s| s.to_string()).collect()))
}

// ------------------------------------------------------------- client_ip

#[test]
fn forwarded_for_is_ignored_unless_the_peer_is_trusted() {
    // The default: no proxy is trusted, the header is the client's word.
    let none = proxies(&[]);
    assert_eq!(none.client_ip(peer("203.0.113.7"), &xff(&["10.0.0.1"])), ip("203.0.113.7"));
    let some = proxies(&["10.0.0.0/8"]);
    // An untrusted peer claiming to forward for someone else.
    assert_eq!(some.client_ip(peer("203.0.113.7"), &xff(&["198.51.100.1"])), ip("203.0.113.7"));
    // No header from a trusted proxy: the proxy itself.
    assert_eq!(some.client_ip(peer("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
}

#[test]
fn the_rightmost_untrusted_address_is_the_client() {
    let a = proxies(&["10.0.0.0/8", "192.0.2.5"]);
    let p = peer("10.0.0.1");
    assert_eq!(a.client_ip(p, &xff(&["198.51.100.1"])), ip("198.51.100.1"));
    // Two trusted hops (10.0.0.2, 192.0.2.5) are skipped.
    assert_eq!(a.client_ip(p, &xff(&["198.51.100.1, 192.0.2.5,10.0.0.2"])), ip("198.51.100.1"));
    // Several header lines are one list.
    assert_eq!(a.client_ip(p, &xff(&["198.51.100.1", "10.0.0.2"])), ip("198.51.100.1"));
    // Every hop trusted: the first one.
    assert_eq!(a.client_ip(p, &xff(&["10.9.9.9, 10.0.0.2"])), ip("10.9.9.9"));
    // Ports and brackets.
    assert_eq!(a.client_ip(p, &xff(&["198.51.100.1:5555"])), ip("198.51.100.1"));
    assert_eq!(a.client_ip(p, &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
    assert_eq!(a.client_ip(p, &xff(&["[2001:db8::1]"])), ip("2001:db8::1"));
}

#[test]
fn a_client_prepending_addresses_does_not_win() {
    let a = proxies(&["10.0.0.0/8"]);
    let p = peer("10.0.0.1");
    // The client sent "X-Forwarded-For: 1.1.1.1, 10.0.0.7" itself (a public
    // address and a trusted-looking one); the proxy appended the real one.
    let h = xff(&["1.1.1.1, 10.0.0.7, 198.51.100.1"]);
    assert_eq!(a.client_ip(p, &h), ip("198.51.100.1"));
    // The same, as a separate header line the client sent before the
    // proxy's.
    let h = xff(&["1.1.1.1, 10.0.0.7", "198.51.100.1"]);
    assert_eq!(a.client_ip(p, &h), ip("198.51.100.1"));
    // Garbage to the left of the client's address is never read.
    let h = xff(&["not an address, 198.51.100.1"]);
    assert_eq!(a.client_ip(p, &h), ip("198.51.100.1"));
}

#[test]
fn a_malformed_header_counts_as_none() {
    let a = proxies(&["10.0.0.0/8"]);
    let p = peer("10.0.0.1");
    for bad in ["", "unknown", "198.51.100.1,", ", 198.51.100.1,", "198.51.100.1, 10.0.0.2 junk", "_hidden"] {
        assert_eq!(a.client_ip(p, &xff(&[bad])), ip("10.0.0.1"), "{bad:?}");
    }
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_bytes(b"198.51.100.1\xff").unwrap());
    assert_eq!(a.client_ip(p, &h), ip("10.0.0.1"));
}

#[test]
fn ipv4_mapped_addresses_match_ipv4_entries() {
    let a = proxies(&["127.0.0.1", "::ffff:10.0.0.0/104"]);
    // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    assert_eq!(a.client_ip(peer("::ffff:127.0.0.1"), &xff(&["::ffff:198.51.100.1"])), ip("198.51.100.1"));
    assert_eq!(a.client_ip(peer("10.2.3.4"), &xff(&["198.51.100.1"])), ip("198.51.100.1"));
    assert_eq!(a.client_ip(peer("::ffff:203.0.113.9"), &xff(&["1.2.3.4"])), ip("203.0.113.9"));
}

#[test]
fn trusted_proxies_parse_addresses_and_blocks() {
    let c = cfg(|c| c.trusted_proxies = vec!["10.0.0.1".into(), " 10.0.0.0/8 ".into(), "::1".into()]);
    assert_eq!(c.trusted_nets().unwrap().len(), 3);
    for bad in ["10.0.0.0/33", "proxy.local", "10.0.0", ""] {
        let c = cfg(|c| c.trusted_proxies = vec![bad.into()]);
        assert!(c.trusted_nets().is_err(), "{bad:?}");
    }
}

// --------------------------------------------------------------- attempts

#[test]
fn attempts_per_ip_are_a_token_bucket() {
    let a = Abuse::new(&cfg(|c| {
        c.connect_rate_per_ip = 10;
        c.connect_burst_per_ip = 5;
    }));
    let (x, y) = (ip("192.0.2.1"), ip("192.0.2.2"));
    for i in 0..5 {
        assert_eq!(a.attempt(x), Ok(()), "attempt {i} within the burst");
    }
    let wait = a.attempt(x).unwrap_err();
    // One token per 100 ms.
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
    // Another address has its own bucket.
    assert_eq!(a.attempt(y), Ok(()));
    std::thread::sleep(wait + Duration::from_millis(5));
    assert_eq!(a.attempt(x), Ok(()), "a token came back");
    assert!(a.attempt(x).is_err());
}

#[test]
fn the_global_bucket_counts_every_address() {
    let a = Abuse::new(&cfg(|c| {
        c.connect_rate_global = 1;
        c.connect_burst_global = 3;
    }));
    for i in 0..3 {
        assert_eq!(a.attempt(IpAddr::from([192, 0, 2, i])), Ok(()));
    }
    let wait = a.attempt(ip("192.0.2.200")).unwrap_err();
    assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
}

#[test]
fn zero_turns_a_limit_off() {
    let a = Abuse::new(&cfg(|_| {}));
    let x = ip("192.0.2.1");
    for _ in 0..10_000 {
        assert_eq!(a.attempt(x), Ok(()));
        assert_eq!(a.publish_ip(x), Ok(()));
    }
    let a = Arc::new(a);
    let guards: Vec<_> = (0..1000).map(|_| a.open(x, Some("u")).unwrap()).collect();
    assert_eq!((a.open_from(x), a.open_of("u")), (0, 0), "nothing counted");
    drop(guards);
    assert!(a.publish_limiter().is_none());
}

#[test]
fn a_storm_of_distinct_addresses_does_not_grow_memory_without_bound() {
    // A bucket refills within 10 ms: entries are fresh again soon after.
    let a = Abuse::new(&cfg(|c| {
        c.connect_rate_per_ip = 1000;
        c.connect_burst_per_ip = 10;
    }));
    let mut most = 0;
    for i in 0u32..200_000 {
        let _ = a.attempt(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        if i % 1000 == 0 {
            most = most.max(a.tracked_addresses());
            // Let buckets refill now and then, as time passes in a storm.
            std::thread::sleep(Duration::from_millis(11));
        }
    }
    assert!(most <= 2 * CLEANUP_EVERY as usize, "{most} addresses held");
}

// --------------------------------------------------------------- publishes

#[test]
fn publish_limits_per_connection_and_per_ip() {
    let a = Abuse::new(&cfg(|c| {
        c.publish_rate_per_connection = 5;
        c.publish_burst_per_connection = 3;
    }));
    let one = a.publish_limiter().expect("on");
    let two = a.publish_limiter().expect("on");
    assert!(std::mem::size_of::<PublishLimiter>() <= 48, "{}", std::mem::size_of::<PublishLimiter>());
    for _ in 0..3 {
        one.check().unwrap();
    }
    let e = one.check().unwrap_err();
    assert_eq!(e.code, Code::RateLimited);
    let wait = e.retry_after.expect("a retry hint");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
    // Each connection has its own.
    two.check().unwrap();
    std::thread::sleep(wait + Duration::from_millis(5));
    one.check().unwrap();

    let x = ip("192.0.2.1");
    for _ in 0..3 {
        assert_eq!(a.publish_ip(x), Ok(()));
    }
    assert!(a.publish_ip(x).is_err());
    assert_eq!(a.publish_ip(ip("192.0.2.2")), Ok(()));
}

// ------------------------------------------------------------ open streams

#[test]
fn open_streams_are_counted_per_ip() {
    let a = Arc::new(Abuse::new(&cfg(|c| c.max_connections_per_ip = 2)));
    let (x, y) = (ip("192.0.2.1"), ip("192.0.2.2"));
    let g1 = a.open(x, None).unwrap();
    let g2 = a.open(x, None).unwrap();
    let e = a.open(x, None).unwrap_err();
    assert_eq!(e.code, Code::RateLimited);
    assert!(e.message.contains("abuse.max_connections_per_ip"), "{}", e.message);
    assert_eq!(a.open_from(x), 2, "a refusal counts nothing");
    let gy = a.open(y, None).unwrap();
    drop(g1);
    assert_eq!(a.open_from(x), 1);
    let g3 = a.open(x, None).unwrap();
    drop((g2, g3, gy));
    assert_eq!((a.open_from(x), a.open_from(y)), (0, 0));
    assert!(a.open_ip.is_empty(), "entries go at 0");
}

#[test]
fn open_streams_are_counted_per_user() {
    let a = Arc::new(Abuse::new(&cfg(|c| {
        c.max_connections_per_ip = 3;
        c.max_connections_per_user = 2;
    })));
    let (x, y, z) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
    // One user from two addresses.
    let g1 = a.open(x, Some("alice")).unwrap();
    let g2 = a.open(y, Some("alice")).unwrap();
    let e = a.open(z, Some("alice")).unwrap_err();
    assert_eq!(e.code, Code::RateLimited);
    assert!(e.message.contains("abuse.max_connections_per_user"), "{}", e.message);
    // The refusal by user undid its count by address.
    assert_eq!(a.open_from(z), 0);
    assert!(!a.open_ip.contains_key(&z));
    // Other users, and anonymous streams, are not affected.
    let gb = a.open(x, Some("bob")).unwrap();
    let anon = a.open(y, None).unwrap();
    assert_eq!((a.open_of("alice"), a.open_of("bob"), a.open_from(x), a.open_from(y)), (2, 1, 2, 2));
    drop(g1);
    let g3 = a.open(z, Some("alice")).unwrap();
    drop((g2, g3, gb, anon));
    assert!(a.open_ip.is_empty() && a.open_user.is_empty(), "entries go at 0");
}

#[test]
fn counters_hold_under_concurrency() {
    let a = Arc::new(Abuse::new(&cfg(|c| {
        c.max_connections_per_ip = 50;
        c.max_connections_per_user = 1_000_000;
    })));
    let x = ip("192.0.2.1");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                let mut max_seen = 0;
                for i in 0..2000 {
                    let user = format!("u{}", (t + i) % 3);
                    if let Ok(g) = a.open(x, Some(&user)) {
                        max_seen = max_seen.max(a.open_from(x));
                        drop(g);
                    }
                }
                max_seen
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap() <= 50);
    }
    assert!(a.open_ip.is_empty() && a.open_user.is_empty());
}

// ------------------------------------------------------------------ config

#[test]
fn config_errors_name_the_key() {
    use crate::config::Config;
    for (toml, key) in [
        ("[abuse]\nconnect_burst_per_ip = 0\n", "abuse.connect_burst_per_ip"),
        ("[abuse]\nconnect_burst_global = 0\n", "abuse.connect_burst_global"),
        ("[abuse]\npublish_burst_per_connection = 0\n", "abuse.publish_burst_per_connection"),
        ("[abuse]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy\"]\n", "abuse.trusted_proxies"),
        ("[reconnect]\nmin = \"5s\"\nwindow = \"2s\"\n", "reconnect.window"),
        ("[reconnect]\nwindow = \"11m\"\n", "reconnect.window"),
        ("[reconnect]\nmin = \"0s\"\nwindow = \"0s\"\n", "reconnect.window"),
    ] {
        let e = Config::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    // A rate of 0 (off) needs no burst.
    let c = Config::from_toml("[abuse]\nconnect_rate_per_ip = 0\nconnect_burst_per_ip = 0\n").unwrap();
    assert_eq!(c.abuse.connect_rate_per_ip, 0);
    let c = Config::from_toml("[abuse]\ntrusted_proxies = [\"127.0.0.1\", \"fd00::/8\"]\n").unwrap();
    assert_eq!(c.abuse.trusted_nets().unwrap().len(), 2);
    let c = Config::from_toml("[reconnect]\nmin = \"0s\"\nwindow = \"10m\"\n").unwrap();
    assert_eq!(c.reconnect.window, Duration::from_secs(600));
}

#[test]
fn exempt_addresses_skip_the_per_ip_limits_only() {
    let abuse = Arc::new(Abuse::new(&cfg(|c| {
        c.connect_rate_per_ip = 1;
        c.connect_burst_per_ip = 1;
        c.max_connections_per_ip = 1;
        c.max_connections_per_user = 1;
        c.exempt = vec!["127.0.0.0/8".into()];
    })));
    let local = ip("127.0.0.9");
    assert!(abuse.exempt(local) && !abuse.exempt(ip("10.0.0.1")));
    for _ in 0..10 {
        assert!(abuse.attempt(local).is_ok(), "no per-IP attempt limit for an exempt address");
    }
    let _a = abuse.open(local, None).unwrap();
    let _b = abuse.open(local, None).expect("no per-IP stream cap for an exempt address");
    let _u = abuse.open(local, Some("u")).unwrap();
    assert!(abuse.open(local, Some("u")).is_err(), "the per-user cap still applies");
    assert!(abuse.attempt(ip("10.0.0.1")).is_ok());
    assert!(abuse.attempt(ip("10.0.0.1")).is_err(), "other addresses are limited");
}
