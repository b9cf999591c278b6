//! The small enumerated settings: `log_format` and `recovery`.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".into()),
        }
    }
}

/// What opening the event log does with damage inside acknowledged
/// records (the `recovery` key; `crate::store` uses it from here).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Refuse to open, naming the file and byte (the default).
    #[default]
    Refuse,
    /// Cut the log at the damage, dropping every later record, and log
    /// what was dropped.
    Truncate,
}

impl std::str::FromStr for Recovery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "truncate" => Ok(Self::Truncate),
            _ => Err("expected refuse or truncate".into()),
        }
    }
}
