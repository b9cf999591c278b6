//! Loading: the file's TOML table, with the environment and the flags laid
//! over it key by key (as text), read once into [`Config`] by its derived
//! `Deserialize`, then the master key file, then validation.
//!
//! Each top-level key remembers where it came from, so an error names the
//! key and its source (`environment variable STEVEDORE_LISTEN: config key
//! `listen`: ...`), and a file's error its line. serde's path to the error
//! (`serde_path_to_error`) names nested keys (`tokens[0].sha256`).

use std::{
    cell::Cell,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{anyhow, bail, Context};
use serde::{de, Deserialize};

use super::{Config, MasterKey};

/// Environment variables `STEVEDORE_<KEY>` override the file, e.g.
/// `STEVEDORE_DATA_DIR` for `data_dir`.
pub const ENV_PREFIX: &str = "STEVEDORE_";

/// `STEVEDORE_*` variables that are not config keys.
pub const NON_CONFIG_ENV: &[&str] = &["STEVEDORE_LOG"];

/// The usual proxy variables and the keys they fill when nothing else set
/// them (lowercase first, as curl).
const PROXY_ENV: [(&str, &str, &str); 3] = [
    ("http_proxy", "http_proxy", "HTTP_PROXY"),
    ("https_proxy", "https_proxy", "HTTPS_PROXY"),
    ("no_proxy", "no_proxy", "NO_PROXY"),
];

/// Every config key: [`Config`]'s field names as serde reads them, in
/// declaration order (README's settings table lists the same keys; a
/// test checks it).
pub fn keys() -> &'static [&'static str] {
    static KEYS: OnceLock<&'static [&'static str]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let fields = Cell::new(&[][..]);
        // The derived `Deserialize` hands its field list to
        // `deserialize_struct`, which records it and stops there.
        match Config::deserialize(FieldNames(&fields)) {
            Ok(_) => unreachable!("FieldNames never yields a value"),
            Err(_stopped) => fields.get(),
        }
    })
}

/// A deserializer that yields nothing and records the field names it is
/// asked for.
struct FieldNames<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only the field names are read"))
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("only the field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Where a top-level key's value came from.
#[derive(Clone)]
enum Origin {
    File,
    Env(String),
    Flag(String),
}

/// The sources, merged into one table.
#[derive(Default)]
struct Layers {
    table: toml::Table,
    origins: HashMap<String, Origin>,
    /// The file's path and text (for error lines).
    file: Option<(PathBuf, String)>,
}

impl Config {
    /// Loads defaults ← `file` ← environment ← `flags` (later wins), then
    /// validates. `env` is passed in so tests need not touch the process.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut layers = Layers::default();
        if let Some(path) = file {
            layers.file(path)?;
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        layers.env(&env)?;
        for (key, value) in flags {
            layers.set(key, value, Origin::Flag((*key).to_owned()))?;
        }
        layers.proxy_env(&env);
        let mut config = layers.read()?;
        layers.master_key_file(&mut config)?;
        for p in [&mut config.http_proxy, &mut config.https_proxy] {
            if p.as_deref() == Some("") {
                *p = None;
            }
        }
        config.validate()?;
        Ok(config)
    }
}

impl Layers {
    fn file(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let context = || format!("config file {}", path.display());
        // toml's own error shows the offending line, which may hold a key
        // or a token: only its position, message and key name are repeated.
        let table: toml::Table = text
            .parse()
            .map_err(|e| toml_error(&text, &e))
            .with_context(context)?;
        for key in table.keys() {
            if !keys().contains(&key.as_str()) {
                return Err(unknown_key(key)).with_context(context);
            }
            self.origins.insert(key.clone(), Origin::File);
        }
        self.table = table;
        self.file = Some((path.to_owned(), text));
        Ok(())
    }

    /// `STEVEDORE_*` variables, in name order.
    fn env(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        let mut ours: Vec<_> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NON_CONFIG_ENV.contains(&k.as_str()))
            .collect();
        ours.sort();
        for (var, value) in ours {
            let key = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            if !keys().contains(&key.as_str()) {
                // A misspelt variable must not be silently ignored.
                bail!(
                    "unknown environment variable {var}: no config key `{key}` (known keys: {})",
                    keys().join(", ")
                );
            }
            self.set(&key, value, Origin::Env(var.clone()))?;
        }
        Ok(())
    }

    fn set(&mut self, key: &str, value: &str, origin: Origin) -> anyhow::Result<()> {
        if !keys().contains(&key) {
            return Err(self.context(&origin, unknown_key(key)));
        }
        self.table
            .insert(key.to_owned(), toml::Value::String(value.to_owned()));
        self.origins.insert(key.to_owned(), origin);
        Ok(())
    }

    /// #19 egress: `http_proxy`, `https_proxy` and `no_proxy` from
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (or their lowercase
    /// forms, preferred) when the file, `STEVEDORE_*` and flags leave them
    /// unset (an empty `no_proxy` counts as unset; an empty proxy is an
    /// explicit "none").
    fn proxy_env(&mut self, env: &[(String, String)]) {
        for (key, lower, upper) in PROXY_ENV {
            let unset = match self.table.get(key) {
                None => true,
                Some(toml::Value::String(s)) => key == "no_proxy" && s.trim().is_empty(),
                Some(toml::Value::Array(a)) => key == "no_proxy" && a.is_empty(),
                Some(_) => false,
            };
            let var = [lower, upper]
                .into_iter()
                .find_map(|name| env.iter().find(|(k, _)| k == name));
            if let (true, Some((name, value))) = (unset, var) {
                self.table
                    .insert(key.to_owned(), toml::Value::String(value.clone()));
                self.origins
                    .insert(key.to_owned(), Origin::Env(name.clone()));
            }
        }
    }

    /// The merged table, read into a [`Config`]; an error names the key
    /// (with its nested path), its source, and in a file its line.
    fn read(&self) -> anyhow::Result<Config> {
        let table = toml::Value::Table(self.table.clone());
        serde_path_to_error::deserialize(table).map_err(|e| {
            let top = e.path().iter().find_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            });
            let mut path = e.path().to_string();
            // toml's message for a value (not a document) is serde's: what
            // was expected, never the text around it.
            let mut message = e.inner().message().trim().to_owned();
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                path = format!("{path}.{field}");
                message = "required".to_owned();
            }
            let line = match (&top, self.origin(top.as_deref())) {
                (Some(key), Some(Origin::File)) => self
                    .file
                    .as_ref()
                    .and_then(|(_, text)| line_of_key(text, key))
                    .map(|n| format!(" (line {n})"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let err = anyhow!("config key `{path}`{line}: {message}");
            match self.origin(top.as_deref()) {
                Some(origin) => self.context(origin, err),
                None => err,
            }
        })
    }

    /// `master_key_file`: read the key it names (never echoing the
    /// file's contents); it and `master_key` exclude each other.
    fn master_key_file(&self, config: &mut Config) -> anyhow::Result<()> {
        let Some(path) = &config.master_key_file else {
            return Ok(());
        };
        let origin = self.origin(Some("master_key_file"));
        let fail = |err: anyhow::Error| match origin {
            Some(origin) => self.context(origin, err),
            None => err,
        };
        if config.master_key.is_some() {
            return Err(fail(anyhow!(
                "config key `master_key_file`: `master_key` is also set; use one of the two"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(anyhow!(
                "config key `master_key_file`: cannot read the key file: {e} (got {path:?})"
            ))
        })?;
        let key = MasterKey::from_base64(&text).map_err(|e| {
            fail(anyhow!(
                "config key `master_key_file`: {}: the key {e}",
                path.display()
            ))
        })?;
        config.master_key = Some(key);
        Ok(())
    }

    fn origin(&self, key: Option<&str>) -> Option<&Origin> {
        self.origins.get(key?)
    }

    fn context(&self, origin: &Origin, err: anyhow::Error) -> anyhow::Error {
        match origin {
            Origin::File => match &self.file {
                Some((path, _)) => err.context(format!("config file {}", path.display())),
                None => err,
            },
            Origin::Env(var) => err.context(format!("environment variable {var}")),
            Origin::Flag(key) => err.context(format!("flag --{}", key.replace('_', "-"))),
        }
    }
}

fn unknown_key(key: &str) -> anyhow::Error {
    anyhow!(
        "unknown config key `{key}` (known keys: {})",
        keys().join(", ")
    )
}

/// A TOML syntax error as position, message and the key being defined,
/// never the text around it: toml's own `Display` quotes the whole line,
/// and a line with a missing quote is typically `master_key = "<the key>`.
fn toml_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = e.span().map_or(text.len(), |s| s.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    // The key whose value is broken: the nearest `key =` at or above the
    // error, under its `[table]` header if any.
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let mut key = None;
    let mut table = None;
    for l in text[..line_end].lines().rev() {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[') {
            let h = h.trim_start_matches('[').trim_end_matches(']').trim();
            table = bare_key(h).map(str::to_owned);
            break;
        }
        if key.is_none() {
            key = l.split_once('=').and_then(|(k, _)| bare_key(k.trim()));
        }
    }
    let name = match (table, key) {
        (Some(t), Some(k)) => format!(" (key `{t}.{k}`)"),
        (None, Some(k)) => format!(" (key `{k}`)"),
        (Some(t), None) => format!(" (in `[{t}]`)"),
        (None, None) => String::new(),
    };
    // toml's messages name expected characters and duplicate key names,
    // not values; several lines become one.
    let message = e.message().trim().replace('\n', "; ");
    anyhow!("TOML syntax error at line {line}, column {column}{name}: {message}")
}

/// `s` if it is a bare (or dotted bare) TOML key of a sane length: a quoted
/// "key" could be anything, a pasted secret included.
fn bare_key(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    .then_some(s)
}

/// The line where `key = ...` (or its `[key]`/`[[key]]` header) is
/// written, if found.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.trim_start_matches('[')
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with(']'))
        })
        .map(|i| i + 1)
}
