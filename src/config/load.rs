//! Reading `config.toml`: TOML syntax, `BERTH_SECTION__KEY` environment overrides, and
//! deserialising into [`Config`] so that every unknown key and badly typed value is reported
//! at once, each with where it came from: the file's line and key, or the environment
//! variable that set it. Semantic checks are `validate`'s.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;

use super::Config;

/// At most this many problems are collected before giving up.
const MAX_PROBLEMS: usize = 50;

/// Reading or parsing the config failed before validation could run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax (the message names line and column), or an override that cannot apply.
    #[error("{0}")]
    Parse(String),
    /// Unknown keys and values of the wrong type, every one found.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

/// One unknown key or bad value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The file and line, or the environment variable.
    pub origin: Origin,
    /// Dotted key path (`upstreams.hub.retries`, `auth.rules[0].users`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file; the line when the key is in it.
    File {
        /// The config path.
        path: PathBuf,
        /// 1-based line of the key.
        line: Option<usize>,
    },
    /// A `BERTH_…` environment override.
    Env(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Env(var) => write!(f, "{var}: {}", self.message),
            Origin::File { path, line: Some(l) } => {
                write!(f, "{}:{l}: {}: {}", path.display(), self.key, self.message)
            }
            Origin::File { path, line: None } => write!(f, "{}: {}: {}", path.display(), self.key, self.message),
        }
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Step::Key(k) if out.is_empty() => out += k,
            Step::Key(k) => out += &format!(".{k}"),
            Step::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

impl Config {
    /// Parse TOML text (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Config, LoadError> {
        parse(text, Path::new("config"), std::iter::empty())
    }

    /// Read `path`, apply `BERTH_SECTION__KEY=value` overrides from `env`, and parse.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.into(),
            source,
        })?;
        parse(&text, path, env)
    }
}

fn parse(text: &str, file: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, LoadError> {
    let spans = toml_edit::ImDocument::parse(text).map_err(|e| LoadError::Parse(e.to_string()))?;
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LoadError::Parse(e.to_string()))?;
    let mut overrides: Vec<(Vec<Step>, String)> = Vec::new();
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("BERTH_") else {
            continue;
        };
        if rest == "CONFIG" || !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        set_path(&mut doc, &path, parse_env_value(&value)).map_err(|e| LoadError::Parse(format!("{key}: {e}")))?;
        overrides.push((path.into_iter().map(Step::Key).collect(), key));
    }
    // Each round reports the first problem serde meets, removes the key, and tries again.
    let mut doc = toml::Value::Table(doc);
    let mut problems = Vec::new();
    let mut removed: BTreeSet<Vec<Step>> = BTreeSet::new();
    while problems.len() < MAX_PROBLEMS {
        let e = match serde_path_to_error::deserialize::<_, Config>(doc.clone()) {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        let mut path: Vec<Step> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        let message = e.inner().message().trim().to_string();
        let named = message.split('`').nth(1).map(str::to_string);
        if let Some(field) = named.clone().filter(|_| message.starts_with("unknown field")) {
            if path.last() != Some(&Step::Key(field.clone())) {
                path.push(Step::Key(field));
            }
        }
        let missing = named.filter(|_| message.starts_with("missing field"));
        let ours = missing
            .as_ref()
            .is_some_and(|f| removed.contains(&[path.clone(), vec![Step::Key(f.clone())]].concat()));
        if !ours {
            let origin = match overrides.iter().find(|(o, _)| path.starts_with(o)) {
                Some((_, var)) => Origin::Env(var.clone()),
                None => Origin::File {
                    path: file.to_path_buf(),
                    line: line_of(&spans, text, &path),
                },
            };
            let key = match &missing {
                Some(f) => dotted(&[path.clone(), vec![Step::Key(f.clone())]].concat()),
                None => dotted(&path),
            };
            problems.push(KeyError { origin, key, message });
        }
        // Remove what is wrong and look further. A bad array element takes its whole array
        // (removing one would renumber the rest); a missing field, its table.
        let mut target = path;
        while matches!(target.last(), Some(Step::Index(_))) {
            target.pop();
        }
        if target.is_empty() || !remove(&mut doc, &target) {
            break;
        }
        removed.insert(target);
    }
    // In file order; the environment's after the file's.
    problems.sort_by_key(|p| match &p.origin {
        Origin::File { line, .. } => (0, line.unwrap_or(0)),
        Origin::Env(_) => (1, 0),
    });
    Err(LoadError::Invalid(problems))
}

/// The 1-based line where the last key of `path` that is written in the file is.
fn line_of(doc: &toml_edit::ImDocument<&str>, text: &str, path: &[Step]) -> Option<usize> {
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span: Option<std::ops::Range<usize>> = None;
    let mut steps = path.iter().peekable();
    while let Some(Step::Key(k)) = steps.next() {
        let Some((key, item)) = table.get_key_value(k) else {
            break;
        };
        span = key.span().or_else(|| item.span()).or(span);
        match (steps.peek(), item) {
            (Some(Step::Index(i)), toml_edit::Item::ArrayOfTables(a)) => {
                let Some(t) = a.get(*i) else { break };
                steps.next();
                span = t.span().or(span);
                table = t;
            }
            (Some(Step::Key(_)), _) => match item.as_table_like() {
                Some(t) => table = t,
                None => break,
            },
            _ => break,
        }
    }
    span.map(|s| {
        text.as_bytes()[..s.start.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    })
}

/// Remove the value at `path`; false if there is none.
fn remove(value: &mut toml::Value, path: &[Step]) -> bool {
    match (path, value) {
        ([Step::Key(k)], toml::Value::Table(t)) => t.remove(k).is_some(),
        ([Step::Key(k), rest @ ..], toml::Value::Table(t)) => t.get_mut(k).is_some_and(|v| remove(v, rest)),
        ([Step::Index(i), rest @ ..], toml::Value::Array(a)) if !rest.is_empty() => {
            a.get_mut(*i).is_some_and(|v| remove(v, rest))
        }
        _ => false,
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // A TOML literal (number, bool, array, quoted string) when it parses as one, else a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(doc: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty override")?;
    let mut table = doc;
    for p in parents {
        table = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}
