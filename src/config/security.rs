//! The security sections of the configuration: `[auth]` (tokens, API keys,
//! origins), `[abuse]` (rate limits and per-IP / per-user caps),
//! `[reconnect]` (server-paced reconnect hints) and `[tls]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]`: off unless a key, a JWKS file or an API key is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 shared secrets (several while rotating). Never logged; shown
    /// redacted by `--print-config`.
    pub hmac_secrets: Vec<String>,
    /// PEM files of RSA public keys: RS256 tokens.
    pub rsa_public_keys: Vec<PathBuf>,
    /// PEM files of EC P-256 public keys: ES256 tokens.
    pub ec_public_keys: Vec<PathBuf>,
    /// A JWKS file whose `kid`s select the key; reloaded when it changes
    /// (checked every `reload_interval`) and on SIGHUP.
    pub jwks_file: Option<PathBuf>,
    /// How often the JWKS file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's), when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Refuse tokens without `exp` (by default a token without `exp` never
    /// expires).
    pub require_exp: bool,
    /// API keys for server-to-server publishers and operator endpoints
    /// (several while rotating): they may publish and subscribe to every
    /// topic. Compared in constant time; shown redacted.
    pub api_keys: Vec<String>,
    /// Browser origins allowed on WebSocket, SSE and long polling (and the
    /// CORS default); empty allows any origin. Requests without an
    /// `Origin` header (not browsers) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secrets: Vec::new(),
            rsa_public_keys: Vec::new(),
            ec_public_keys: Vec::new(),
            jwks_file: None,
            reload_interval: Duration::from_secs(10),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: false,
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// True when any credential source is configured: then every request
    /// needs a token or an API key.
    pub fn enabled(&self) -> bool {
        !self.hmac_secrets.is_empty()
            || !self.rsa_public_keys.is_empty()
            || !self.ec_public_keys.is_empty()
            || self.jwks_file.is_some()
            || !self.api_keys.is_empty()
    }
}

/// `[abuse]`: limits that shed a hostile or runaway client before it costs
/// the others. On by default with values no ordinary client reaches; `0`
/// turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseConfig {
    /// Connection attempts (new connections and subscribing requests:
    /// WebSocket, SSE, poll, gRPC streams) per client IP per second.
    pub connect_rate_per_ip: u32,
    /// Burst above `connect_rate_per_ip`.
    pub connect_burst_per_ip: u32,
    /// Connection attempts per second over every client.
    pub connect_rate_global: u32,
    /// Burst above `connect_rate_global`.
    pub connect_burst_global: u32,
    /// Open streams (WebSocket, SSE, poll, gRPC streams) per client IP.
    pub max_connections_per_ip: u32,
    /// Open streams per user (token `sub`).
    pub max_connections_per_user: u32,
    /// Publishes per connection per second (WebSocket, gRPC `Connect`;
    /// HTTP and gRPC `Publish` per client IP).
    pub publish_rate_per_connection: u32,
    /// Burst above `publish_rate_per_connection`.
    pub publish_burst_per_connection: u32,
    /// Ephemeral publishes per connection per second (typing indicators,
    /// cursors); counted apart from stored publishes. 0: no limit.
    pub ephemeral_rate_per_connection: u32,
    /// Burst above `ephemeral_rate_per_connection`.
    pub ephemeral_burst_per_connection: u32,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the
    /// client; empty trusts no proxy (the default).
    pub trusted_proxies: Vec<String>,
    /// Client addresses (or CIDR blocks) the per-IP and per-connection
    /// limits do not apply to (the global and per-user ones still do):
    /// loopback by default, so local tools, sidecars and a local proxy that
    /// is not in `trusted_proxies` are not shed as one client.
    pub exempt: Vec<String>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            connect_rate_per_ip: 50,
            connect_burst_per_ip: 200,
            connect_rate_global: 5000,
            connect_burst_global: 20000,
            max_connections_per_ip: 10_000,
            max_connections_per_user: 100,
            publish_rate_per_connection: 200,
            publish_burst_per_connection: 1000,
            ephemeral_rate_per_connection: 20,
            ephemeral_burst_per_connection: 50,
            trusted_proxies: Vec::new(),
            exempt: vec!["127.0.0.0/8".into(), "::1".into()],
        }
    }
}

impl AbuseConfig {
    /// `trusted_proxies` parsed: each entry an address (`10.0.0.1`, `::1`)
    /// or a CIDR block (`10.0.0.0/8`). `Err` names the first entry that is
    /// neither.
    pub fn trusted_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        nets(&self.trusted_proxies)
    }

    /// `exempt` parsed, like [`AbuseConfig::trusted_nets`].
    pub fn exempt_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        nets(&self.exempt)
    }
}

/// Addresses or CIDR blocks, parsed; `Err` names the first bad entry.
fn nets(entries: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    {
        entries
            .iter()
            .map(|entry| {
                let s = entry.trim();
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| canonical_net(net.trunc()))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR block"))
            })
            .collect()
    }
}

/// An IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`) as the IPv4 block it
/// names, so it matches peers the way they are compared (canonical form).
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, ipnet::IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// `[reconnect]`: when rtgate closes many clients at once (shutdown, a
/// shed storm) it tells each when to come back, spread over `window`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Shortest hint.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// Hints are spread uniformly over `min..window` with per-client jitter.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig { min: Duration::from_millis(500), window: Duration::from_secs(15) }
    }
}

/// `[tls]`: native TLS termination (rustls), off unless both files are set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first); reloaded when it changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); reloaded when it changes.
    /// Never logged.
    pub key_file: Option<PathBuf>,
    /// How often both files are checked for changes (size, modification
    /// time); SIGHUP reloads them at once.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { cert_file: None, key_file: None, reload_interval: Duration::from_secs(10) }
    }
}
