//! Where each setting comes from, for `shitud config check` and
//! `shitud config show`: the layers in order (built-in defaults, the main
//! file, `conf.d/*.toml`, `SHITU__…` environment variables), each value with
//! its file and line or its variable.
//!
//! [`Settings::load`] merges the same layers with the `config` crate; this
//! module reads them again only to attribute values and problems.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::Settings;

/// The main settings file of an installed box.
pub const SYSTEM_CONFIG: &str = "/etc/shitu-edge/config.toml";

/// Prefix of the environment variables that set keys (`SHITU__MQTT__PORT`).
const ENV_PREFIX: &str = "SHITU__";

/// Settings whose values `config show` masks.
const SECRETS: [&str; 1] = ["mqtt.password"];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A settings file, 1-based line (0 when unknown).
    File(PathBuf, usize),
    /// An environment variable.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p, 0) => write!(f, "{}", p.display()),
            Origin::File(p, line) => write!(f, "{}:{line}", p.display()),
            Origin::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// One problem, with where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where the offending value was set.
    pub origin: Origin,
    /// The setting (`mqtt.port`), when the problem is about one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {k}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// The settings files, in the order they apply: `main` (else
/// [`SYSTEM_CONFIG`] if it exists), then `conf.d/*.toml` in its folder, by name.
pub fn files(main: Option<&Path>) -> Vec<PathBuf> {
    let main = match main {
        Some(m) => m.to_path_buf(),
        None if Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
        None => return Vec::new(),
    };
    let mut out = vec![main.clone()];
    let dir = main
        .parent()
        .map_or_else(|| PathBuf::from("conf.d"), |p| p.join("conf.d"));
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut extra: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        extra.sort();
        out.extend(extra);
    }
    out
}

/// Every value set by the files and the environment, in the order they apply.
struct Layers {
    values: Vec<(String, toml::Value, Option<String>, Origin)>,
    /// Where each element of an array of tables and its keys are
    /// (`sources[1]`, `sources[1].uri`): the array is one value, but a
    /// problem is about one element.
    elements: Vec<(String, Origin)>,
    problems: Vec<Problem>,
}

fn read(main: Option<&Path>) -> Layers {
    let mut layers = Layers {
        values: Vec::new(),
        elements: Vec::new(),
        problems: Vec::new(),
    };
    if let Some(m) = main {
        if !m.exists() {
            layers.problems.push(Problem {
                origin: Origin::File(m.to_path_buf(), 0),
                key: None,
                message: "no such file".into(),
            });
            return layers;
        }
    }
    for path in files(main) {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                layers.problems.push(Problem {
                    origin: Origin::File(path, 0),
                    key: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match text.parse::<toml::Table>() {
            Ok(table) => {
                let lines = key_lines(&text);
                for (key, line) in lines.iter().filter(|(k, _)| k.contains('[')) {
                    layers
                        .elements
                        .push((key.clone(), Origin::File(path.clone(), *line)));
                }
                let mut leaves = Vec::new();
                flatten("", &table, &mut leaves);
                for (key, value) in leaves {
                    let line = lines.get(&key).copied().unwrap_or(0);
                    layers
                        .values
                        .push((key, value, None, Origin::File(path.clone(), line)));
                }
            }
            Err(e) => {
                let line = e.span().map_or(0, |s| {
                    text[..s.start.min(text.len())].matches('\n').count() + 1
                });
                let message = e.message().to_string();
                layers.problems.push(Problem {
                    origin: Origin::File(path, line),
                    key: None,
                    message: format!("not valid TOML: {message}"),
                });
            }
        }
    }
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let key = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        // Typed when it reads as a TOML value (1884, true, ["a"]), else the text itself.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        layers
            .values
            .push((key, value, Some(raw), Origin::Env(var)));
    }
    layers
}

/// Leaf values of `table` by dotted key; arrays are leaves.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// The line of each `key = …` under its `[section]`: enough for the flat
/// layout of shitu-edge's files (no inline tables or dotted keys needed).
/// Under `[[sources]]`, the n-th element's keys are `sources[n].key`
/// (0-based, counted in this file), and the header is `sources` (first) and
/// `sources[n]`.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    let mut elements: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        // A header may carry a comment: `[mqtt]  # broker`.
        let header = l.split('#').next().unwrap_or_default().trim();
        if let Some(h) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            let name = h.trim().to_string();
            let n = elements.entry(name.clone()).or_insert(0);
            section = format!("{name}[{n}]");
            *n += 1;
            out.entry(name).or_insert(i + 1);
            out.insert(section.clone(), i + 1);
        } else if let Some(h) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.trim().to_string();
        } else if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            if !k.is_empty() && !k.starts_with('#') {
                let key = if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                };
                out.entry(key).or_insert(i + 1);
            }
        }
    }
    out
}

/// `key = value` as a nested table.
fn nest(key: &str, value: toml::Value) -> toml::Table {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut t = toml::Table::new();
    t.insert(last.to_string(), value);
    for p in parts.into_iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(p.to_string(), toml::Value::Table(t));
        t = outer;
    }
    t
}

/// Whether `key = value` alone deserialises; the error otherwise.
fn check_one(key: &str, value: &toml::Value) -> Result<(), String> {
    if let Some((old, new, why)) = super::RENAMED.iter().find(|(old, _, _)| *old == key) {
        return Err(super::renamed(old, new, why));
    }
    toml::Value::Table(nest(key, value.clone()))
        .try_into::<Settings>()
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

/// Merges `key = value` into `into`.
fn merge(into: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts = key.split('.').peekable();
    let mut t = into;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            t.insert(p.to_string(), value);
            return;
        }
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        t = next;
    }
}

/// The effective settings and where each set key came from.
pub struct Effective {
    /// The settings, as every command would get them (before flags).
    pub settings: Settings,
    /// The origin of each key some layer set; unset keys are defaults.
    pub origins: BTreeMap<String, Origin>,
}

/// Reads the layers, checks every value on its own (type, unknown key), then
/// the merged settings (ranges, combinations, files that must exist).
/// Returns what could be built and every problem found.
pub fn check(main: Option<&Path>) -> (Option<Effective>, Vec<Problem>) {
    let layers = read(main);
    let mut problems = layers.problems;
    let mut merged = toml::Table::new();
    let mut origins = BTreeMap::new();
    for (key, value, raw, origin) in layers.values {
        // The config crate reads environment values as text and converts
        // them where needed; accept either reading.
        let accepted = match check_one(&key, &value) {
            Ok(()) => Some(value),
            Err(e) => match raw.map(toml::Value::String) {
                Some(text) if check_one(&key, &text).is_ok() => Some(text),
                _ => {
                    problems.push(Problem {
                        origin: origin.clone(),
                        key: Some(key.clone()),
                        message: e,
                    });
                    None
                }
            },
        };
        if let Some(v) = accepted {
            merge(&mut merged, &key, v);
            origins.insert(key, origin);
        }
    }
    let settings = match toml::Value::Table(merged).try_into::<Settings>() {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem {
                origin: Origin::Default,
                key: None,
                message: e.to_string(),
            });
            return (None, problems);
        }
    };
    // An element's own line where the array was accepted; else the array's.
    let elements: BTreeMap<String, Origin> = layers
        .elements
        .into_iter()
        .filter(|(k, _)| k.split('[').next().is_some_and(|a| origins.contains_key(a)))
        .collect();
    let origin_of = |key: &str| {
        let element = key.find(']').map_or(key, |end| &key[..=end]);
        origins
            .get(key)
            .or_else(|| elements.get(key))
            .or_else(|| elements.get(element))
            .cloned()
            .unwrap_or(Origin::Default)
    };
    let missing = settings.missing_files().into_iter();
    for (key, message) in settings
        .problems()
        .into_iter()
        .chain(missing.map(|(k, m)| (k.to_string(), m)))
    {
        problems.push(Problem {
            origin: origin_of(&key),
            key: Some(key),
            message,
        });
    }
    (Some(Effective { settings, origins }), problems)
}

/// The effective settings as TOML, secrets masked, each key set by a layer
/// followed by where it came from.
pub fn show(e: &Effective) -> String {
    let mut table = match toml::Value::try_from(&e.settings) {
        Ok(toml::Value::Table(t)) => t,
        _ => return String::new(),
    };
    for secret in SECRETS {
        let (section, key) = secret.split_once('.').unwrap_or(("", secret));
        if let Some(toml::Value::Table(t)) = table.get_mut(section) {
            if t.contains_key(key) {
                t.insert(key.to_string(), toml::Value::String("********".into()));
            }
        }
    }
    let text = toml::to_string_pretty(&table).unwrap_or_default();
    // Annotate `key = …` lines with their origin, using the same section tracking as key_lines.
    let mut out = String::new();
    let mut section = String::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.to_string();
        }
        out.push_str(line);
        if let Some((k, _)) = l.split_once(" = ") {
            let key = if section.is_empty() {
                k.to_string()
            } else {
                format!("{section}.{k}")
            };
            if let Some(o) = e.origins.get(&key) {
                out.push_str(&format!("  # {o}"));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_follow_sections() {
        let l = key_lines("# c\n[mqtt]   # broker\nport = 1\n\n[mqtt.tls]\nenabled = true # x\n[[sources]]\nname = \"a\"\n[[sources]]\nname = \"b\"\n");
        assert_eq!(l["mqtt.port"], 3);
        assert_eq!(l["mqtt.tls.enabled"], 6);
        assert_eq!(
            (l["sources"], l["sources[0]"], l["sources[0].name"]),
            (7, 7, 8)
        );
        assert_eq!((l["sources[1]"], l["sources[1].name"]), (9, 10));
    }

    #[test]
    fn each_bad_value_is_reported_with_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[mqtt]\nhost = \"broker\"\nport = 70000\n[daemon]\nmax_batch = 0\nspeling = 1\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/10-line.toml"),
            "[mqtt]\nhost = \"line7\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/20-broken.toml"), "[search\n").unwrap();
        let (eff, problems) = check(Some(&main));
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has(&format!(
                "{}:3: mqtt.port: invalid value: integer `70000`",
                main.display()
            )),
            "{text:#?}"
        );
        assert!(
            has(&format!(
                "{}:6: daemon.speling: unknown field `speling`",
                main.display()
            )),
            "{text:#?}"
        );
        assert!(
            has(&format!(
                "{}:5: daemon.max_batch: must be at least 1",
                main.display()
            )),
            "{text:#?}"
        );
        assert!(has("20-broken.toml:1: not valid TOML"), "{text:#?}");
        let eff = eff.expect("the valid values still merge");
        assert_eq!(
            eff.settings.mqtt.host, "line7",
            "conf.d comes after the main file"
        );
        assert_eq!(
            eff.origins["mqtt.host"],
            Origin::File(dir.path().join("conf.d/10-line.toml"), 2)
        );
    }

    #[test]
    fn a_bad_source_is_named_with_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[capture]\ndeadline_ms = 500\n\n[[sources]]\nname = \"cam1\"\nuri = \"rtsp://10.0.0.7/s1\"\n\n\
             [[sources]]  # second\nname = \"cam1\"\nuri = \"http://10.0.0.8/s\"\n\n\
             [[sources]]\nname = \"cam3\"\nuri = \"gst:videotestsrc ! nosuchelement ! appsink name=sink\"\n",
        )
        .unwrap();
        let (eff, problems) = check(Some(&main));
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        let m = main.display();
        assert!(
            has(&format!(
                "{m}:9: sources[1].name: \"cam1\" names an earlier source"
            )),
            "{text:#?}"
        );
        assert!(
            has(&format!("{m}:10: sources[1].uri: unknown scheme \"http\"")),
            "{text:#?}"
        );
        assert!(
            has(&format!("{m}:14: sources[2].uri")) && has("nosuchelement"),
            "{text:#?}"
        );
        let others: Vec<&String> = text
            .iter()
            .filter(|t| !t.contains("sources[") && !t.contains("search.index"))
            .collect();
        assert!(others.is_empty(), "{others:#?}");
        assert_eq!(eff.unwrap().settings.sources.len(), 3);
        // An unknown key inside a source is named too.
        std::fs::write(&main, "[[sources]]\nname = \"a\"\nurl = \"rtsp://x/y\"\n").unwrap();
        let (_, problems) = check(Some(&main));
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            has_any(&text, &format!("{m}:1: sources: unknown field `url`")),
            "{text:#?}"
        );
    }

    fn has_any(text: &[String], needle: &str) -> bool {
        text.iter().any(|t| t.contains(needle))
    }

    #[test]
    fn secrets_are_masked() {
        let mut s = Settings::default();
        s.mqtt.password = Some("hunter2".into());
        let text = show(&Effective {
            settings: s,
            origins: BTreeMap::new(),
        });
        assert!(
            !text.contains("hunter2") && text.contains("password = \"********\""),
            "{text}"
        );
    }
}
