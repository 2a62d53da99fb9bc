//! Option values: how each type is read from text and TOML and shown
//! (secrets masked), and the checks options refer to.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How a value of an option's type is read from text (environment, flags)
/// and from TOML, and shown by `raa config check`.
pub trait Setting: Sized {
    fn from_text(text: &str) -> Result<Self, String>;
    fn from_toml(value: toml::Value) -> Result<Self, String>;
    /// A TOML rendering, secrets masked.
    fn show(&self) -> String;
}

macro_rules! number_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn from_text(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|_| format!("expected a number, got {text:?}"))
            }
            fn from_toml(value: toml::Value) -> Result<Self, String> {
                match value {
                    toml::Value::Integer(i) => {
                        <$t>::try_from(i).map_err(|_| format!("{i} is out of range"))
                    }
                    toml::Value::String(s) => Self::from_text(&s),
                    other => Err(format!("expected a number, got {}", other.type_str())),
                }
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
number_setting!(i64, u64, usize);

impl Setting for f64 {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("expected a number, got {text:?}"))
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Float(f) => Ok(f),
            toml::Value::Integer(i) => Ok(i as f64),
            other => Err(format!("expected a number, got {}", other.type_str())),
        }
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
}

impl Setting for String {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Ok(s),
            other => Err(format!("expected a string, got {}", other.type_str())),
        }
    }
    fn show(&self) -> String {
        toml::Value::String(self.clone()).to_string()
    }
}

impl Setting for PathBuf {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        String::from_toml(value).map(PathBuf::from)
    }
    fn show(&self) -> String {
        self.display().to_string().show()
    }
}

impl Setting for SocketAddr {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("expected an address such as 0.0.0.0:9101, got {text:?}"))
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Self::from_text(&String::from_toml(value)?)
    }
    fn show(&self) -> String {
        self.to_string().show()
    }
}

impl<T: Setting> Setting for Option<T> {
    fn from_text(text: &str) -> Result<Self, String> {
        T::from_text(text).map(Some)
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        T::from_toml(value).map(Some)
    }
    fn show(&self) -> String {
        match self {
            Some(v) => v.show(),
            None => "(unset)".to_owned(),
        }
    }
}

/// A connection string whose password is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceUrl(pub String);

impl fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl Setting for SourceUrl {
    fn from_text(text: &str) -> Result<Self, String> {
        Ok(SourceUrl(text.to_owned()))
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        String::from_toml(value).map(SourceUrl)
    }
    fn show(&self) -> String {
        redact_url(&self.0).show()
    }
}

/// Masks the password of a `postgresql://user:password@host/db` URL or of a
/// `key=value` connection string (`password=…`).
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some(at) = authority.rfind('@') {
            let (userinfo, host) = authority.split_at(at);
            if let Some(colon) = userinfo.find(':') {
                return format!("{scheme}{}:***{host}{tail}", &userinfo[..colon]);
            }
        }
        return url.to_owned();
    }
    // key=value form: mask the value after `password=` (quoted or not).
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("password") {
        let (before, after) = rest.split_at(i);
        out.push_str(before);
        let after_key = &after["password".len()..];
        let trimmed = after_key.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            let value = value.trim_start();
            let end = if let Some(quoted) = value.strip_prefix('\'') {
                quoted.find('\'').map_or(value.len(), |e| e + 2)
            } else {
                value.find(char::is_whitespace).unwrap_or(value.len())
            };
            out.push_str("password=***");
            rest = &value[end..];
        } else {
            out.push_str("password");
            rest = after_key;
        }
    }
    out.push_str(rest);
    out
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable (coloured on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Setting for LogFormat {
    fn from_text(text: &str) -> Result<Self, String> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("must be \"text\" or \"json\", not {other:?}")),
        }
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Self::from_text(&String::from_toml(value)?)
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "\"text\"".into(),
            LogFormat::Json => "\"json\"".into(),
        }
    }
}

impl Setting for crate::pipeline::AckPolicy {
    fn from_text(text: &str) -> Result<Self, String> {
        text.trim().parse()
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Self::from_text(&String::from_toml(value)?)
    }
    fn show(&self) -> String {
        match self {
            crate::pipeline::AckPolicy::Durable => "\"durable\"".into(),
            crate::pipeline::AckPolicy::Checkpointed => "\"checkpointed\"".into(),
        }
    }
}

// ---- checks, one per option that needs one -------------------------------

pub(super) fn any<T>(_: &T) -> Result<(), String> {
    Ok(())
}

pub(super) fn subhr(v: &i64) -> Result<(), String> {
    match v {
        15 | 30 => Ok(()),
        other => Err(format!("must be 15 or 30 (minutes), not {other}")),
    }
}

pub(super) fn name(v: &String) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be lower-case letters, digits and _ (at most 63), not {v:?}"
        ))
    }
}

pub(super) fn positive_usize(v: &usize) -> Result<(), String> {
    if *v > 0 {
        Ok(())
    } else {
        Err("must be at least 1".into())
    }
}

pub(super) fn positive_u64(v: &u64) -> Result<(), String> {
    if *v > 0 {
        Ok(())
    } else {
        Err("must be at least 1".into())
    }
}

pub(super) fn non_negative(v: &i64) -> Result<(), String> {
    if *v >= 0 {
        Ok(())
    } else {
        Err("must not be negative".into())
    }
}

pub(super) fn positive_f64(v: &f64) -> Result<(), String> {
    if v.is_finite() && *v > 0.0 {
        Ok(())
    } else {
        Err("must be a positive number".into())
    }
}
