//! One typed configuration for every subcommand: defaults < TOML file <
//! `RAA_*` environment < command-line flags.
//!
//! Every option is declared once, in the `options!` table at the bottom of
//! this file: its name, type, default, check and help. From that one line
//! follow the TOML key (`batch_changes`), the environment variable
//! (`RAA_BATCH_CHANGES`), the flag (`--batch-changes`), the check and the
//! line `raa config check` prints. Adding an option is adding a line there
//! (a value of a new type also needs a [`Setting`] impl, a new check a
//! function, both in `values.rs`). Other `RAA_*` variables (`RAA_CONFIG`,
//! test and benchmark knobs) are not options and are left alone.
//!
//! The whole configuration is validated before the runtime starts; an invalid
//! value is refused with the key and where it came from. Secrets (the source
//! URL's password, the password file's content) are never printed: `Debug`
//! and `config check` mask them.

mod values;

use crate::pipeline::AckPolicy;
use values::{any, name, non_negative, positive_f64, positive_u64, positive_usize, subhr};
pub use values::{redact_url, LogFormat, Setting, SourceUrl};

use crate::source::{ConfigError as SourceConfigError, SourceConfig};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where an option's effective value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "{v}"),
            Origin::Flag(flag) => write!(f, "{flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key {key:?} in {origin}")]
    UnknownKey { key: String, origin: Origin },
    #[error("{key} (from {origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        message: String,
    },
    #[error(
        "source_url is not set: pass --source-url, set RAA_SOURCE_URL or source_url in the \
         configuration file"
    )]
    NoSource,
    #[error("cannot read password_file {path}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceConfigError),
}

/// Generates [`Config`], its defaults, the key list and the per-key setter.
macro_rules! options {
    ($( $(#[doc = $doc:literal])+ $key:ident : $ty:ty = $default:expr, check $check:expr; )*) => {
        /// The effective configuration. Field names are the TOML keys.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $key: $ty, )*
            /// Where each key's value came from.
            pub origins: BTreeMap<&'static str, Origin>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $( $key: $default, )*
                    origins: BTreeMap::new(),
                }
            }
        }

        /// Every key: name and help (the first doc line).
        pub const KEYS: &[(&str, &str)] = &[ $( (stringify!($key), first_line(&[$($doc),+])) ),* ];

        impl Config {
            /// Sets `key` from text (environment, flag) or TOML, checked.
            fn set(&mut self, key: &str, raw: Raw, origin: Origin) -> Result<(), ConfigError> {
                match key {
                    $( stringify!($key) => {
                        let invalid = |message: String| ConfigError::Invalid {
                            key: stringify!($key), origin: origin.clone(), message,
                        };
                        let value: $ty = match raw {
                            Raw::Text(t) => <$ty as Setting>::from_text(&t),
                            Raw::Toml(v) => <$ty as Setting>::from_toml(v),
                        }.map_err(invalid)?;
                        ($check)(&value).map_err(invalid)?;
                        self.$key = value;
                        self.origins.insert(stringify!($key), origin);
                        Ok(())
                    } )*
                    other => Err(ConfigError::UnknownKey { key: other.to_owned(), origin }),
                }
            }

            /// `(key, shown value)` for every key, secrets masked.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                vec![ $( (stringify!($key), Setting::show(&self.$key)) ),* ]
            }
        }
    };
}

/// The first line of an option's doc comment: its `--help` text.
const fn first_line(docs: &[&'static str]) -> &'static str {
    docs[0]
}

enum Raw {
    Text(String),
    Toml(toml::Value),
}

options! {
    /// Info Mart connection: a postgresql:// URL or "host=… user=… dbname=…".
    source_url: Option<SourceUrl> = None, check any;
    /// File holding the source password (a mounted Kubernetes secret); overrides the URL's.
    password_file: Option<PathBuf> = None, check any;
    /// Replication slot raa owns.
    slot: String = "raa".into(), check name;
    /// Publication raa owns.
    publication: String = "raa".into(), check name;
    /// Directory of the state store (the StatefulSet's volume).
    state_dir: PathBuf = "raa-state".into(), check any;
    /// sled's page cache for the state, in MiB (sled keeps a multiple of it resident).
    state_cache_mb: u64 = 32, check positive_u64;
    /// Width of sub-hour buckets, in minutes (15 or 30).
    subhr_minutes: i64 = 15, check subhr;
    /// Ring time (seconds) at or under which an accepted invite is within the service level.
    service_level_seconds: i64 = 20, check non_negative;
    /// End a sink batch after this many row changes (whole transactions).
    batch_changes: usize = 50_000, check positive_usize;
    /// State entries (accumulators, fact records, index entries; ~800 bytes each) a batch holds in memory: a batch ends at half of it, and one source transaction larger than that spills its work to the state directory.
    batch_entries: usize = 200_000, check positive_usize;
    /// End a sink batch at most this many milliseconds after it started.
    batch_delay_ms: u64 = 200, check any;
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    metrics_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 9101)), check any;
    /// /readyz answers 503 while the replication lag exceeds this many seconds.
    ready_max_lag_seconds: f64 = 60.0, check positive_f64;
    /// How often the slot's retained WAL and the state size are measured, in seconds.
    poll_interval_seconds: u64 = 10, check positive_u64;
    /// After SIGTERM/SIGINT, how long the batch in flight may take before raa exits non-zero.
    shutdown_grace_seconds: u64 = 30, check any;
    /// Log format: "text" (human) or "json" (one object per line).
    log_format: LogFormat = LogFormat::Text, check any;
    /// The mounted GCXI share: checkpoints of the state go to `<share_dir>/<slot>/`.
    share_dir: Option<PathBuf> = None, check any;
    /// Seconds between checkpoints on the share.
    checkpoint_interval_seconds: u64 = 900, check positive_u64;
    /// Checkpoints kept on the share (newest first).
    checkpoint_retain: usize = 3, check positive_usize;
    /// How far the slot is acknowledged: "durable" (the local state) or "checkpointed" (the oldest retained checkpoint; the default with share_dir).
    ack_policy: Option<AckPolicy> = None, check any;
    // New options go here: one line each (e.g. share_dir, checkpoint_interval_seconds,
    // checkpoint_retention, ack_policy). The flag, the variable and `config check` follow.
}

/// The environment variable of `key`: `RAA_` and the key in upper case.
pub fn env_var(key: &str) -> String {
    format!("RAA_{}", key.to_ascii_uppercase())
}

/// The flag of `key`: `--` and the key with dashes.
pub fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

impl Config {
    /// Builds the configuration: defaults, then `file` (when given), then the
    /// `RAA_*` variables of `env`, then `flags` (`(key, text)` pairs).
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = file {
            cfg.merge_file(path)?;
        }
        for (key, _) in KEYS {
            let var = env_var(key);
            if let Some(text) = env(&var) {
                cfg.set(key, Raw::Text(text), Origin::Env(var))?;
            }
        }
        for (key, text) in flags {
            cfg.set(key, Raw::Text(text.clone()), Origin::Flag(flag(key)))?;
        }
        Ok(cfg)
    }

    /// Merges a TOML file: top-level `key = value` pairs, unknown keys refused.
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.merge_toml(&text, path)
    }

    fn merge_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
        for (key, value) in table {
            self.set(&key, Raw::Toml(value), Origin::File(path.to_owned()))?;
        }
        Ok(())
    }

    /// `state_cache_mb` in bytes; a size past `u64` is as good as no limit.
    pub fn state_cache_bytes(&self) -> u64 {
        self.state_cache_mb.saturating_mul(1 << 20)
    }

    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// The source connection, with the password from `password_file` merged in.
    pub fn source(&self) -> Result<SourceConfig, ConfigError> {
        let url = self.source_url.as_ref().ok_or(ConfigError::NoSource)?;
        let mut source = SourceConfig::new(&url.0, &self.slot, &self.publication)?;
        if let Some(path) = &self.password_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            // A secret file often ends with a newline nobody meant as part of the password.
            source.pg.password(text.trim_end_matches(['\n', '\r']));
        }
        Ok(source)
    }

    /// What `raa config check` prints: valid TOML, each line with its origin.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, shown) in self.entries() {
            let origin = self.origin(key);
            let line = if shown == "(unset)" {
                format!("# {key} is unset")
            } else {
                format!("{key} = {shown}")
            };
            out.push_str(&format!("{line:<60} # {origin}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.merge_toml(text, Path::new("raa.toml"))?;
        Ok(c)
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raa.toml");
        std::fs::write(
            &file,
            "slot = \"from_file\"\nbatch_changes = 7\nsubhr_minutes = 30\n",
        )
        .unwrap();
        let env = |v: &str| match v {
            "RAA_SLOT" => Some("from_env".to_owned()),
            "RAA_BATCH_CHANGES" => Some("8".to_owned()),
            _ => None,
        };
        let flags = vec![("slot".to_owned(), "from_flag".to_owned())];
        let c = Config::load(Some(&file), env, &flags).unwrap();
        assert_eq!(c.slot, "from_flag");
        assert_eq!(c.batch_changes, 8);
        assert_eq!(c.subhr_minutes, 30);
        assert_eq!(c.publication, "raa");
        assert_eq!(c.origin("slot"), Origin::Flag("--slot".into()));
        assert_eq!(
            c.origin("batch_changes"),
            Origin::Env("RAA_BATCH_CHANGES".into())
        );
        assert_eq!(c.origin("subhr_minutes"), Origin::File(file));
        assert_eq!(c.origin("publication"), Origin::Default);
    }

    #[test]
    fn invalid_values_name_the_key_and_origin() {
        let e = from_toml("batch_chnages = 5").unwrap_err().to_string();
        assert_eq!(e, "unknown key \"batch_chnages\" in raa.toml");
        let e = from_toml("subhr_minutes = 20").unwrap_err().to_string();
        assert_eq!(
            e,
            "subhr_minutes (from raa.toml): must be 15 or 30 (minutes), not 20"
        );
        // A zero cache would make sled read every page from disk.
        let e = from_toml("state_cache_mb = 0").unwrap_err().to_string();
        assert!(e.starts_with("state_cache_mb (from raa.toml): "), "{e}");
        let huge = from_toml(&format!("state_cache_mb = {}", i64::MAX)).unwrap();
        assert_eq!(huge.state_cache_bytes(), u64::MAX);
        let e = from_toml("slot = 5").unwrap_err().to_string();
        assert!(
            e.starts_with("slot (from raa.toml): expected a string"),
            "{e}"
        );
        let e = from_toml("slot = ").unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let flags = vec![("subhr_minutes".to_owned(), "20".to_owned())];
        let e = Config::load(None, no_env, &flags).unwrap_err().to_string();
        assert!(
            e.starts_with("subhr_minutes (from --subhr-minutes): must be 15 or 30"),
            "{e}"
        );
        let e = Config::load(None, |_| Some("x".into()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(from RAA_"), "{e}");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            redact_url("postgresql://raa:s3cret@db:5432/im?sslmode=disable"),
            "postgresql://raa:***@db:5432/im?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgresql://raa@db/im"),
            "postgresql://raa@db/im"
        );
        assert_eq!(
            redact_url("host=db password=s3cret user=raa"),
            "host=db password=*** user=raa"
        );
        assert_eq!(
            redact_url("host=db password = 'a b' user=raa"),
            "host=db password=*** user=raa"
        );
        let c = from_toml("source_url = \"postgresql://raa:s3cret@db/im\"").unwrap();
        assert!(!c.render().contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_password_file_is_merged_into_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let flags = vec![
            (
                "source_url".to_owned(),
                "host=db user=raa dbname=im".to_owned(),
            ),
            ("password_file".to_owned(), pw.display().to_string()),
        ];
        let c = Config::load(None, no_env, &flags).unwrap();
        let source = c.source().unwrap();
        assert_eq!(source.pg.get_password(), Some(&b"s3cret"[..]));
        assert!(matches!(
            Config::default().source(),
            Err(ConfigError::NoSource)
        ));
    }

    #[test]
    fn the_rendering_is_valid_toml_that_loads_back() {
        let c = from_toml("subhr_minutes = 30\nlog_format = \"json\"").unwrap();
        let again = from_toml(&c.render()).unwrap();
        assert_eq!(again.subhr_minutes, 30);
        assert_eq!(again.log_format, LogFormat::Json);
        assert_eq!(again.metrics_addr, c.metrics_addr);
    }
}
