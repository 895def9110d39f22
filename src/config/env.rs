//! `RTGATE_*` environment variables: which name a configuration key (and
//! are read), and which do not (and are reported, never an error).

use super::Config;

/// The prefix of configuration variables.
pub(super) const ENV_PREFIX: &str = "RTGATE_";

/// What [`Config::load`] found.
#[derive(Debug)]
pub struct Loaded {
    /// The effective, validated configuration.
    pub config: Config,
    /// Names (never values: they may be secrets) of `RTGATE_*` variables
    /// that name no configuration key and were not read.
    pub ignored_env: Vec<String>,
}

/// The tree of every key and section, from the defaults (`null` for unset
/// optional keys, so those are known too).
pub(super) fn known_keys() -> serde_json::Value {
    serde_json::to_value(Config::default()).unwrap_or_default()
}

/// Whether `dotted` (a variable's name after the prefix, `__` read as `.`)
/// names a key or a section of `tree`, ignoring case.
pub(super) fn names_a_key(tree: &serde_json::Value, dotted: &str) -> bool {
    let mut node = tree;
    for part in dotted.split('.') {
        match node.get(part.to_ascii_lowercase()) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// The `RTGATE_*` names among `vars` that [`names_a_key`] does not know,
/// sorted (`RTGATE_CONFIG` is the `--config` flag's).
pub(super) fn ignored_env(
    tree: &serde_json::Value,
    vars: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<String> {
    let mut ignored: Vec<String> = vars
        .filter_map(|name| name.into_string().ok())
        .filter(|name| {
            name.get(..ENV_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX)) && {
                let key = name[ENV_PREFIX.len()..].replace("__", ".");
                !key.eq_ignore_ascii_case("config") && !names_a_key(tree, &key)
            }
        })
        .collect();
    ignored.sort();
    ignored
}
