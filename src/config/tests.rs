//! Unit tests of loading, validation and the environment.

use super::*;

#[test]
fn defaults_validate_and_round_trip() {
    let c = Config::default();
    c.validate().unwrap();
    let back = Config::from_toml(&c.to_toml()).unwrap();
    assert_eq!(back.listen, c.listen);
    assert_eq!(back.history.max_age, c.history.max_age);
}

#[test]
fn environment_names_are_matched_against_the_keys() {
    let tree = known_keys();
    for known in ["listen", "LISTEN", "history.max_len", "REDIS.URL", "admin.listen", "redis", "log.format"] {
        assert!(names_a_key(&tree, known), "{known} is a key");
    }
    for unknown in ["port", "service_host", "port_8080_tcp_addr", "history.nope", "listen.x", ""] {
        assert!(!names_a_key(&tree, unknown), "{unknown} is no key");
    }
    let vars = [
        "RTGATE_PORT",
        "RTGATE_SERVICE_HOST",
        "RTGATE_HISTORY__MAX_LEN",
        "RTGATE_CONFIG",
        "PATH",
        "RTGATE_PORT_8080_TCP_ADDR",
    ]
    .map(std::ffi::OsString::from);
    assert_eq!(
        ignored_env(&tree, vars.into_iter()),
        ["RTGATE_PORT", "RTGATE_PORT_8080_TCP_ADDR", "RTGATE_SERVICE_HOST"]
    );
}

#[test]
fn errors_name_the_key() {
    let e = Config::from_toml("[history]\nmax_len = 0\n").unwrap_err().to_string();
    assert!(e.contains("history.max_len"), "{e}");
    let e = Config::from_toml("[history]\nmax_len = \"ten\"\n").unwrap_err().to_string();
    assert!(e.contains("max_len"), "{e}");
    let e = Config::from_toml("[history]\nmax_lenn = 3\n").unwrap_err().to_string();
    assert!(e.contains("max_lenn"), "{e}");
    let e = Config::from_toml("[heartbeat]\ninterval = \"10s\"\ntimeout = \"5s\"\n").unwrap_err().to_string();
    assert!(e.contains("heartbeat.timeout"), "{e}");
    let c = Config::from_toml("listen = \"0.0.0.0:9\"\n[history]\nmax_age = \"90s\"\n").unwrap();
    assert_eq!(c.history.max_age, Duration::from_secs(90));
    assert_eq!(c.listen.port(), 9);
    for bad in [1, 4095, (64 << 20) + 1] {
        let e = Config::from_toml(&format!("[http]\nsend_buffer = {bad}\n")).unwrap_err().to_string();
        assert!(e.contains("http.send_buffer"), "{e}");
    }
    for good in [0, 4096, 65536, 64 << 20] {
        let c = Config::from_toml(&format!("[http]\nsend_buffer = {good}\n")).unwrap();
        assert_eq!(c.http.send_buffer, good);
    }
}

#[test]
fn print_config_redacts_secrets_and_api_keys() {
    let toml =
        "[auth]\nhmac_secrets = [\"hs-secret-one\", \"hs-secret-two\"]\napi_keys = [\"api-key-xyz\"]\n";
    let c = Config::from_toml(toml).unwrap();
    assert_eq!(c.auth.hmac_secrets, ["hs-secret-one", "hs-secret-two"]);
    let shown = c.to_toml();
    for secret in ["hs-secret-one", "hs-secret-two", "api-key-xyz"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    let back: toml::Table = toml::from_str(&shown).unwrap();
    let auth = back["auth"].as_table().unwrap();
    let redacted = |key: &str| {
        auth[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(redacted("hmac_secrets"), [REDACTED, REDACTED]);
    assert_eq!(redacted("api_keys"), [REDACTED]);
    // The configuration itself keeps them.
    assert_eq!(c.auth.api_keys, ["api-key-xyz"]);
}

#[test]
fn webhook_secrets_are_redacted_and_keys_validated() {
    let secret = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTEyMzQ1";
    let entry = |name: &str, url: &str, secrets: &str, topics: &str, extra: &str| {
        format!(
            "[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecrets = [{secrets}]\ntopics = [{topics}]\n{extra}\n\
             [[webhooks_in]]\nname = \"src\"\nsecrets = [\"{secret}\"]\ntopic = \"in\"\n"
        )
    };
    let good = format!("\"{secret}\"");
    let hook = |extra: &str| entry("a", "http://127.0.0.1:1/h", &good, "\"t.*\"", extra);
    let c = Config::from_toml(&hook("")).unwrap();
    let shown = c.to_toml();
    assert!(!shown.contains(secret), "{shown}");
    assert_eq!(shown.matches(REDACTED).count(), 2, "{shown}");
    let key_of = |toml: String| match Config::from_toml(&toml) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("{toml}: {other:?}"),
    };
    assert_eq!(key_of(hook("max_attempts = 0")), "webhooks.max_attempts");
    assert_eq!(key_of(hook("concurrency = 0")), "webhooks.concurrency");
    assert_eq!(key_of(entry("a", "ftp://x", &good, "\"t\"", "")), "webhooks.url");
    assert_eq!(key_of(entry("a", "http://h/", "\"plain\"", "\"t\"", "")), "webhooks.secrets");
    assert_eq!(key_of(entry("a", "http://h/", &good, "", "")), "webhooks.topics");
    assert_eq!(key_of(entry("Bad Name", "http://h/", &good, "\"t\"", "")), "webhooks.name");
}

#[test]
fn auth_errors_name_the_key() {
    for (toml, key) in [
        ("[auth]\nhmac_secrets = [\"\"]\n", "auth.hmac_secrets"),
        ("[auth]\napi_keys = [\"has space\"]\n", "auth.api_keys"),
        ("[auth]\napi_keys = [\"\"]\n", "auth.api_keys"),
        ("[auth]\nreload_interval = \"0s\"\n", "auth.reload_interval"),
        ("[auth]\nleeway = \"1h\"\n", "auth.leeway"),
        ("[auth]\nissuer = \"\"\n", "auth.issuer"),
        ("[auth]\naudience = \"\"\n", "auth.audience"),
        ("[auth]\njwks_file = \"\"\n", "auth.jwks_file"),
        ("[auth]\nrsa_public_keys = [\"\"]\n", "auth.rsa_public_keys"),
        ("[auth]\nallowed_origins = [\"bad\\u0001\"]\n", "auth.allowed_origins"),
    ] {
        let e = Config::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
    let ok = "[auth]\nrequire_exp = true\nleeway = \"0s\"\nissuer = \"i\"\n";
    let c = Config::from_toml(ok).unwrap();
    assert!(c.auth.require_exp && c.auth.leeway.is_zero());
}

mod gateway_toml {
    use super::*;

    /// `gateway.toml` documents every key with its default: loading it gives
    /// exactly the defaults, and every section of the config appears in it.
    #[test]
    fn gateway_toml_matches_the_defaults() {
        let text = include_str!("../../gateway.toml");
        let loaded = Config::from_toml(text).unwrap();
        assert_eq!(loaded.to_toml(), Config::default().to_toml());
        let defaults: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        for (key, value) in &defaults {
            match value {
                toml::Value::Table(t) => {
                    assert!(text.contains(&format!("[{key}]")), "gateway.toml lacks [{key}]");
                    for k in t.keys() {
                        assert!(text.contains(&format!("\n{k} = ")), "gateway.toml lacks {key}.{k}");
                    }
                }
                _ => assert!(text.contains(&format!("\n{key} = ")), "gateway.toml lacks {key}"),
            }
        }
    }
}

/// The retired `[websocket]` keys still load, are named for the startup
/// warning, and change nothing else; an unknown key there is still refused.
#[test]
fn retired_websocket_keys_load_and_are_named() {
    let c =
        Config::from_toml("[websocket]\nread_buffer_size = 64\nmax_write_buffer_size = 1048576\n").unwrap();
    assert_eq!(c.retired_keys(), ["websocket.read_buffer_size", "websocket.max_write_buffer_size"]);
    assert!(Config::default().retired_keys().is_empty());
    assert!(Config::from_toml("[websocket]\nread_buffer = 64\n").is_err());
}
