//! Loading: built-in defaults < the file < the environment. The only reader of environment
//! variables; unknown keys are found by comparing with the keys of `Settings::default()`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::{ConfigError, Settings};

/// Environment aliases of SPEC §1 and the key each one sets.
/// `PORT`, `REDIS_PASSWORD` and `REDIS_DB` are special: they complete another value.
const ALIASES: &[(&str, &str)] = &[
    ("CACHE_L1_MAX_ENTRIES", "l1.max_entries"),
    ("CACHE_DEFAULT_TTL", "cache.default_ttl_secs"),
    ("CACHE_CLEANUP_INTERVAL", "l1.cleanup_interval_secs"),
    ("REDIS_URL", "l2.url"),
    ("METRICS_ENABLED", "metrics.enabled"),
    ("METRICS_INTERVAL", "metrics.interval_secs"),
];

const ENV_PREFIX: &str = "TIERCACHE__";

impl Settings {
    /// Loads settings from the built-in defaults, then `file` (or `config/default.toml` when it
    /// exists and no file is named), then `env`. Ranges and URLs are checked when the parts are
    /// made ([`Settings::parts`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first key that is unknown or of the wrong type.
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let known = known_keys();

        let mut builder = config::Config::builder();
        let default_file = Path::new("config/default.toml");
        let file = match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::new("--config", format!("cannot read file {}", path.display())));
            }
            Some(path) => Some(path),
            None if default_file.is_file() => Some(default_file),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| ConfigError::new("--config", format!("cannot read {}: {err}", path.display())))?;
            let table: toml::Table = text
                .parse()
                .map_err(|err: toml::de::Error| ConfigError::new(toml_error_key(&err), toml_error_message(&err)))?;
            check_known_keys(&toml::Value::Table(table), "", &known)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }

        let file_settings: Settings = deserialize(builder.build_cloned())?;
        builder = apply_env(builder, &env, &known, &file_settings)?;
        deserialize(builder.build())
    }
}

fn deserialize(built: Result<config::Config, config::ConfigError>) -> Result<Settings, ConfigError> {
    built.and_then(config::Config::try_deserialize).map_err(from_config_error)
}

/// Every dotted key `Settings` knows, with whether its value is a list.
fn known_keys() -> BTreeMap<String, bool> {
    let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
    let mut keys = BTreeMap::new();
    if let serde_json::Value::Object(sections) = defaults {
        for (section, fields) in sections {
            if let serde_json::Value::Object(fields) = fields {
                for (field, value) in fields {
                    keys.insert(format!("{section}.{field}"), value.is_array());
                }
            }
        }
    }
    keys
}

fn check_known_keys(value: &toml::Value, prefix: &str, known: &BTreeMap<String, bool>) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = value else {
        return Ok(());
    };
    for (name, child) in table {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let is_section = known.keys().any(|known_key| known_key.starts_with(&format!("{key}.")));
        if is_section {
            if !child.is_table() {
                return Err(ConfigError::new(key, "must be a table"));
            }
            check_known_keys(child, &key, known)?;
        } else if !known.contains_key(&key) {
            return Err(ConfigError::new(key, "unknown key"));
        }
    }
    Ok(())
}

/// Layers the environment over the builder: aliases first, then `TIERCACHE__` variables, so
/// that the `TIERCACHE__` form wins when both are set.
fn apply_env(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    env: &BTreeMap<String, String>,
    known: &BTreeMap<String, bool>,
    file_settings: &Settings,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    let set = |builder: config::ConfigBuilder<_>, key: &str, raw: &str| -> Result<_, ConfigError> {
        let value: config::Value = if known.get(key).copied().unwrap_or(false) {
            let items: Vec<String> =
                raw.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect();
            items.into()
        } else {
            raw.into()
        };
        builder.set_override(key, value).map_err(|err| ConfigError::new(key, err.to_string()))
    };

    for (alias, key) in ALIASES {
        if let Some(raw) = env.get(*alias) {
            builder = set(builder, key, raw)?;
        }
    }
    if let Some(port) = env.get("PORT") {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| ConfigError::new("PORT", format!("not a port in 1..=65535: {port:?}")))?;
        let listen =
            env.get("TIERCACHE__SERVER__LISTEN").cloned().unwrap_or_else(|| file_settings.server.listen.clone());
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| ConfigError::new("server.listen", format!("not a socket address (ip:port): {listen:?}")))?;
        builder = set(builder, "server.listen", &SocketAddr::new(addr.ip(), port).to_string())?;
    }
    if env.contains_key("REDIS_PASSWORD") || env.contains_key("REDIS_DB") {
        let url = env
            .get("TIERCACHE__L2__URL")
            .or_else(|| env.get("REDIS_URL"))
            .cloned()
            .unwrap_or_else(|| file_settings.l2.url.expose().to_string());
        if !url.is_empty() {
            let url = complete_redis_url(&url, env.get("REDIS_PASSWORD"), env.get("REDIS_DB"))?;
            builder = set(builder, "l2.url", &url)?;
        }
    }

    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        if !known.contains_key(&key) {
            return Err(ConfigError::new(key, format!("unknown key (from environment variable {name})")));
        }
        if key == "l2.url" && (env.contains_key("REDIS_PASSWORD") || env.contains_key("REDIS_DB")) {
            continue; // Already applied above, completed with the password and database.
        }
        builder = set(builder, &key, raw)?;
    }
    Ok(builder)
}

/// Adds `REDIS_PASSWORD` and `REDIS_DB` to a Redis URL that does not carry them already.
fn complete_redis_url(url: &str, password: Option<&String>, db: Option<&String>) -> Result<String, ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::new("l2.url", "not a URL (expected redis://host:port)"));
    };
    let (authority, path) = match rest.find('/') {
        Some(idx) => (&rest[..idx], &rest[idx..]),
        None => (rest, ""),
    };
    let authority = match password {
        Some(password) if !authority.contains('@') => {
            let encoded = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
            format!(":{encoded}@{authority}")
        }
        _ => authority.to_string(),
    };
    let path = match db {
        Some(db) if path.trim_start_matches('/').is_empty() => {
            db.parse::<u32>().map_err(|_| ConfigError::new("REDIS_DB", "must be a database number"))?;
            format!("/{db}")
        }
        _ => path.to_string(),
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Turns the `config` crate's error into "key: problem". Its messages end in
/// "for key `x.y`" when they concern one key.
fn from_config_error(err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    if let Some(start) = text.find("for key `") {
        let after = &text[start + "for key `".len()..];
        if let Some(end) = after.find('`') {
            let problem = text[..start].trim_end().to_string();
            return ConfigError::new(&after[..end], problem);
        }
    }
    if let Some(field) = text.strip_prefix("unknown field `") {
        let name = field.split('`').next().unwrap_or_default();
        return ConfigError::new(name, "unknown key");
    }
    ConfigError::new("config", text)
}

fn toml_error_key(err: &toml::de::Error) -> String {
    err.span().map(|span| format!("config file (byte {})", span.start)).unwrap_or_else(|| "config file".into())
}

fn toml_error_message(err: &toml::de::Error) -> String {
    err.message().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Secret;

    /// Loads `config/default.toml` and `pairs` as the environment, and checks the result as
    /// start-up does.
    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let settings =
            Settings::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))), env)?;
        settings.validate().map(|()| settings)
    }

    #[test]
    fn default_toml_documents_exactly_the_built_in_defaults() {
        assert_eq!(load_env(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn every_known_key_appears_in_default_toml() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for key in known_keys().keys() {
            let (section, field) = key.split_once('.').unwrap();
            assert!(table.get(section).and_then(|s| s.get(field)).is_some(), "{key} missing from default.toml");
        }
    }

    #[test]
    fn prefixed_env_overrides_file_and_alias() {
        let settings = load_env(&[("CACHE_L1_MAX_ENTRIES", "7"), ("TIERCACHE__L1__MAX_ENTRIES", "5000")]).unwrap();
        assert_eq!(settings.l1.max_entries, 5000);
        let settings = load_env(&[("CACHE_L1_MAX_ENTRIES", "7")]).unwrap();
        assert_eq!(settings.l1.max_entries, 7);
    }

    #[test]
    fn every_alias_sets_its_key() {
        let settings = load_env(&[
            ("CACHE_DEFAULT_TTL", "60"),
            ("CACHE_CLEANUP_INTERVAL", "9"),
            ("METRICS_ENABLED", "false"),
            ("METRICS_INTERVAL", "3"),
            ("PORT", "8123"),
        ])
        .unwrap();
        assert_eq!(settings.cache.default_ttl_secs, 60);
        assert_eq!(settings.l1.cleanup_interval_secs, 9);
        assert!(!settings.metrics.enabled);
        assert_eq!(settings.metrics.interval_secs, 3);
        assert_eq!(settings.server.listen, "0.0.0.0:8123");
    }

    #[test]
    fn port_alias_yields_to_prefixed_listen() {
        let settings = load_env(&[("PORT", "8123"), ("TIERCACHE__SERVER__LISTEN", "127.0.0.1:9000")]).unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:9000");
    }

    #[test]
    fn redis_aliases_complete_the_url() {
        assert_eq!(
            complete_redis_url("redis://cache:6379", Some(&"p@ss".into()), Some(&"2".into())).unwrap(),
            "redis://:p%40ss@cache:6379/2"
        );
        assert_eq!(
            complete_redis_url("redis://u:x@h:1/3", Some(&"y".into()), Some(&"4".into())).unwrap(),
            "redis://u:x@h:1/3"
        );
        let settings =
            load_env(&[("REDIS_URL", "redis://127.0.0.1:6379"), ("REDIS_DB", "1"), ("REDIS_PASSWORD", "pw")]).unwrap();
        assert_eq!(settings.l2.url.expose(), "redis://:pw@127.0.0.1:6379/1");
        let settings = load_env(&[("REDIS_URL", "redis://a:1"), ("TIERCACHE__L2__URL", "redis://b:2")]).unwrap();
        assert_eq!(settings.l2.url.expose(), "redis://b:2", "the TIERCACHE__ form wins");
        let err = load_env(&[("REDIS_URL", "http://nope")]).unwrap_err();
        assert_eq!(err.key, "l2.url");
        assert!(!err.problem.contains("nope"), "URLs are never printed: {err}");
    }

    #[test]
    fn lists_in_env_are_comma_separated() {
        let env = [("TIERCACHE__WARM__KEYS".to_string(), "a, b,c".to_string())];
        let err = Settings::load(None, env).and_then(|settings| settings.validate()).unwrap_err();
        assert_eq!(err.key, "warm.keys", "parsed as a list, then refused without an origin: {err}");
        let env = [
            ("TIERCACHE__WARM__KEYS".to_string(), "a, b,c".to_string()),
            ("TIERCACHE__ORIGIN__URL".to_string(), "http://127.0.0.1:1/{key}".to_string()),
        ];
        assert_eq!(Settings::load(None, env).unwrap().warm.keys, ["a", "b", "c"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(load_env(&[("TIERCACHE__L1__MAX_ENTRIES", "0")]).unwrap_err().key, "l1.max_entries");
        assert_eq!(load_env(&[("TIERCACHE__L1__MAX_ENTRIES", "many")]).unwrap_err().key, "l1.max_entries");
        assert_eq!(load_env(&[("TIERCACHE__L1__COLOUR", "red")]).unwrap_err().key, "l1.colour");
        assert_eq!(load_env(&[("TIERCACHE__SERVER__LISTEN", "nowhere")]).unwrap_err().key, "server.listen");
        assert_eq!(load_env(&[("TIERCACHE__LOG__FORMAT", "xml")]).unwrap_err().key, "log.format");
        assert_eq!(load_env(&[("PORT", "70000")]).unwrap_err().key, "PORT");
        let huge = "18446744073709551615";
        for (var, key) in [
            ("TIERCACHE__SERVER__MAX_CONCURRENCY", "server.max_concurrency"),
            ("CACHE_CLEANUP_INTERVAL", "l1.cleanup_interval_secs"),
            ("TIERCACHE__CACHE__MAX_TTL_SECS", "cache.max_ttl_secs"),
        ] {
            assert_eq!(load_env(&[(var, huge)]).unwrap_err().key, key);
        }
    }

    #[test]
    fn auth_settings_are_checked() {
        let mut blank = Settings::default();
        blank.auth.tokens = vec![Secret("a".into()), Secret("  ".into())];
        assert_eq!(blank.validate().unwrap_err().key, "auth.tokens");
        assert_eq!(load_env(&[("TIERCACHE__AUTH__READ_TOKENS", "r")]).unwrap_err().key, "auth.read_tokens");
        assert_eq!(load_env(&[("TIERCACHE__METRICS__REQUIRE_AUTH", "true")]).unwrap_err().key, "metrics.require_auth");
        let settings = load_env(&[("TIERCACHE__AUTH__TOKENS", "a, b"), ("TIERCACHE__AUTH__READ_TOKENS", "r")]).unwrap();
        let auth = settings.parts().unwrap().auth;
        assert_eq!((auth.tokens, auth.read_tokens), (vec!["a".to_string(), "b".into()], vec!["r".to_string()]));
    }

    #[test]
    fn origin_settings_are_checked_and_capped() {
        for url in ["http://127.0.0.1:8081/items", "ftp://host/{key}", "not a url/{key}"] {
            assert_eq!(load_env(&[("TIERCACHE__ORIGIN__URL", url)]).unwrap_err().key, "origin.url", "{url}");
        }
        assert_eq!(
            load_env(&[("TIERCACHE__CACHE__GRACE_SECS", "18446744073709551615")]).unwrap_err().key,
            "cache.grace_secs"
        );
        let settings = load_env(&[
            ("TIERCACHE__ORIGIN__URL", "https://origin.internal/v1/{key}.json"),
            ("TIERCACHE__ORIGIN__DEFAULT_TTL_SECS", "999999999"),
            ("TIERCACHE__CACHE__GRACE_SECS", "30"),
        ])
        .unwrap();
        let cache = settings.parts().unwrap().cache;
        let origin = cache.origin.expect("an origin");
        assert_eq!(origin.url.for_key("a/b"), "https://origin.internal/v1/a%2Fb.json");
        assert_eq!(
            origin.default_ttl,
            Duration::from_secs(settings.cache.max_ttl_secs),
            "capped at cache.max_ttl_secs"
        );
        assert_eq!(cache.lifetime.grace, Duration::from_secs(30));
        assert!(load_env(&[]).unwrap().parts().unwrap().cache.origin.is_none());
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret("hunter2".into());
        assert_eq!(format!("{secret:?}"), "***");
    }
}
