//! Reading a config file: the format, JSON comments, the passes over the
//! text that find and parse the entries, and errors with line, column and
//! field path.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::mihomo;
use super::singbox::{self, ClientOptions, ServerOptions};
use super::{ConfigError, Notes};

/// The syntax of a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigFormat {
    /// JSON (sing-box), with `//` and `/* */` comments and trailing commas.
    Json,
    /// YAML (mihomo).
    Yaml,
}

impl ConfigFormat {
    /// The format of a file: by its extension (`.json`, `.jsonc`, `.yaml`,
    /// `.yml`), else by its text (`{`, `//` or `/*` first: JSON, else YAML).
    /// Formats this program does not read are errors.
    pub fn detect(path: Option<&Path>, text: &str) -> Result<ConfigFormat, ConfigError> {
        let ext = path
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("json" | "jsonc") => return Ok(ConfigFormat::Json),
            Some("yaml" | "yml") => return Ok(ConfigFormat::Yaml),
            Some(e @ ("toml" | "ini" | "conf" | "xml" | "json5")) => {
                return Err(ConfigError::Unsupported(format!(
                    "{}: .{e} files are not supported: use sing-box JSON or mihomo (Clash.Meta) YAML",
                    display(path)
                )));
            }
            _ => {}
        }
        // YAML comments start with `#`; `//` and `/*` can only be JSON's.
        let start = text.trim_start_matches('\u{feff}').trim_start();
        let json = ["{", "//", "/*"].iter().any(|p| start.starts_with(p));
        Ok(if json {
            ConfigFormat::Json
        } else {
            ConfigFormat::Yaml
        })
    }
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(|| "config".to_owned(), |p| p.display().to_string())
}

/// The text of a config, ready for the passes.
pub(super) struct Source<'a> {
    /// File name for messages (`config` without one).
    pub name: String,
    pub format: ConfigFormat,
    /// Whether the format was guessed from the text.
    pub guessed: bool,
    text: Cow<'a, str>,
}

impl<'a> Source<'a> {
    pub fn new(
        path: Option<&Path>,
        text: &'a str,
        format: Option<ConfigFormat>,
    ) -> Result<Source<'a>, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let guessed = format.is_none()
            && !path
                .and_then(|p| p.extension())
                .is_some_and(|e| matches!(e.to_str(), Some("json" | "jsonc" | "yaml" | "yml")));
        let format = match format {
            Some(f) => f,
            None => ConfigFormat::detect(path, text)?,
        };
        let text = match format {
            ConfigFormat::Json => strip_json_comments(text),
            ConfigFormat::Yaml => Cow::Borrowed(text),
        };
        Ok(Source {
            name: display(path),
            format,
            guessed,
            text,
        })
    }

    /// The prefix for notes and late errors: `file: ` (or nothing without a file).
    pub fn prefix(&self) -> String {
        if self.name == "config" {
            String::new()
        } else {
            format!("{}: ", self.name)
        }
    }

    /// Runs `seed` over the whole text, tracking the field path.
    pub fn parse<T, S>(&self, seed: S) -> Result<T, ConfigError>
    where
        S: for<'de> DeserializeSeed<'de, Value = T>,
    {
        let mut track = serde_path_to_error::Track::new();
        match self.format {
            ConfigFormat::Json => {
                let mut de = serde_json::Deserializer::from_str(&self.text);
                let res = seed
                    .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
                    .and_then(|v| de.end().map(|()| v));
                res.map_err(|e| {
                    let msg = strip_position(e.to_string(), e.line(), e.column());
                    // serde_json's column 0 is "before the first character".
                    let column = if e.line() > 0 { e.column().max(1) } else { 0 };
                    self.error(e.line(), column, track.path().to_string(), msg)
                })
            }
            ConfigFormat::Yaml if self.text.contains("<<") => {
                // Merge keys (`<<: *anchor`, common in mihomo configs, which
                // mihomo's YAML library applies) need the document as a
                // value first; errors then have a path but no position.
                let mut value: serde_norway::Value =
                    serde_norway::from_str(&self.text).map_err(|e| {
                        let (line, column) =
                            e.location().map_or((0, 0), |l| (l.line(), l.column()));
                        self.error(line, column, String::new(), e.to_string())
                    })?;
                value
                    .apply_merge()
                    .map_err(|e| self.error(0, 0, String::new(), e.to_string()))?;
                seed.deserialize(serde_path_to_error::Deserializer::new(value, &mut track))
                    .map_err(|e| self.error(0, 0, track.path().to_string(), e.to_string()))
            }
            ConfigFormat::Yaml => {
                let de = serde_norway::Deserializer::from_str(&self.text);
                seed.deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
                    .map_err(|e| {
                        let (line, column) =
                            e.location().map_or((0, 0), |l| (l.line(), l.column()));
                        let path = track.path().to_string();
                        let mut msg = strip_position(e.to_string(), line, column);
                        // serde_norway names its own idea of the path first.
                        if let Some((p, rest)) = msg.split_once(": ")
                            && !p.contains(' ')
                            && (p == "." || path.contains(p))
                        {
                            msg = rest.to_owned();
                        }
                        self.error(line, column, path, msg)
                    })
            }
        }
    }

    /// Parses the whole text as one `T`.
    pub fn parse_as<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.parse(PhantomData::<T>)
    }

    /// Parses the whole text as one `T`, which must be written as a map
    /// (serde would also fill a struct from a list).
    pub fn parse_map<T: DeserializeOwned>(
        &self,
        expecting: &'static str,
    ) -> Result<T, ConfigError> {
        self.parse(MapOnly::<T> {
            expecting,
            _t: PhantomData,
        })
    }

    /// Parses the entry at `a.1` of the list under key `a.0` and the entries
    /// at `b.1` of the list under `b.0`; everything else is skipped unparsed.
    pub fn pick<A: DeserializeOwned, B: DeserializeOwned>(
        &self,
        a: (&'static str, usize),
        b: (&'static str, &[usize]),
    ) -> Result<(A, Vec<(usize, B)>), ConfigError> {
        let (first, rest) = self.parse(PickLists::<A, B> {
            a: (a.0, &[a.1]),
            b,
            _t: PhantomData,
        })?;
        let first = first.into_iter().next().map(|(_, v)| v).ok_or_else(|| {
            ConfigError::NotFound(format!("{}: {}[{}] vanished", self.name, a.0, a.1))
        })?;
        Ok((first, rest))
    }

    fn error(&self, line: usize, column: usize, path: String, msg: String) -> ConfigError {
        ConfigError::Parse {
            source_name: self.name.clone(),
            line,
            column,
            path,
            msg,
        }
    }
}

/// Drops the ` at line L column C` serde_json and serde_norway append.
fn strip_position(msg: String, line: usize, column: usize) -> String {
    let suffix = format!(" at line {line} column {column}");
    match msg.strip_suffix(&suffix) {
        Some(m) => m.to_owned(),
        None => msg,
    }
}

/// Replaces `//` and `/* */` comments, and commas before `]` or `}`, by
/// spaces (newlines kept), so that serde_json reads sing-box's JSON and its
/// lines and columns still point into the file as written.
pub(super) fn strip_json_comments(text: &str) -> Cow<'_, str> {
    if !text.contains('/') && !text.contains(',') {
        return Cow::Borrowed(text);
    }
    let mut out = text.as_bytes().to_vec();
    let b = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    // The last comma outside strings, and whether only blanks came since.
    let mut pending_comma: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                for (k, o) in out.iter_mut().enumerate().take(end).skip(i) {
                    if b[k] != b'\n' && b[k] != b'\r' {
                        *o = b' ';
                    }
                }
                i = end;
                continue;
            }
            b',' => pending_comma = Some(i),
            b']' | b'}' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes outside strings were replaced by ASCII spaces.
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}

// ---------------------------------------------------------------------------
// Seeds: parse some elements of some lists strictly, skip everything else

/// A `T` that must be written as a map.
struct MapOnly<T> {
    expecting: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for MapOnly<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOnly<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

/// The elements at `want` of a list, as `T`; the others skipped unparsed.
struct PickSeq<'a, T> {
    want: &'a [usize],
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for PickSeq<'_, T> {
    type Value = Vec<(usize, T)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for PickSeq<'_, T> {
    type Value = Vec<(usize, T)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        for i in 0.. {
            if self.want.contains(&i) {
                match seq.next_element::<T>()? {
                    Some(v) => out.push((i, v)),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
        }
        Ok(out)
    }
}

/// The wanted elements of the lists under two keys of the top-level map
/// (`outbounds` and `inbounds`, `proxies` and `listeners`); every other key
/// is skipped unparsed.
struct PickLists<'a, A, B> {
    a: (&'static str, &'a [usize]),
    b: (&'static str, &'a [usize]),
    _t: PhantomData<(A, B)>,
}

/// Elements and their indices.
type Picked<A, B> = (Vec<(usize, A)>, Vec<(usize, B)>);

impl<'de, A: Deserialize<'de>, B: Deserialize<'de>> DeserializeSeed<'de> for PickLists<'_, A, B> {
    type Value = Picked<A, B>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, A: Deserialize<'de>, B: Deserialize<'de>> Visitor<'de> for PickLists<'_, A, B> {
    type Value = Picked<A, B>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while let Some(key) = map.next_key::<String>()? {
            if key == self.a.0 {
                a = map.next_value_seed(PickSeq {
                    want: self.a.1,
                    _t: PhantomData,
                })?;
            } else if key == self.b.0 {
                b = map.next_value_seed(PickSeq {
                    want: self.b.1,
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok((a, b))
    }
}

/// Just enough of a list entry to choose it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ProbeEntry {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl ProbeEntry {
    /// `tag` (sing-box) or `name` (mihomo).
    pub fn label(&self) -> Option<&str> {
        self.tag.as_deref().or(self.name.as_deref())
    }

    /// `mixed "name"` for messages.
    pub fn describe(&self) -> String {
        let kind = self.kind.as_deref().unwrap_or("(no type)");
        match self.label() {
            Some(l) => format!("{kind} {l:?}"),
            None => kind.to_owned(),
        }
    }
}

/// Chooses the `anytls` entry of `list` (named `key`): the one labelled
/// `select`, else the first. Notes the choice and the entries left out.
pub(super) fn choose(
    list: &[ProbeEntry],
    key: &str,
    select: Option<&str>,
    notes: &mut Notes,
) -> Result<usize, ConfigError> {
    let anytls: Vec<usize> = (0..list.len())
        .filter(|&i| list[i].kind.as_deref() == Some("anytls"))
        .collect();
    let chosen = match select {
        Some(name) => match list.iter().position(|e| e.label() == Some(name)) {
            Some(i) if anytls.contains(&i) => i,
            Some(i) => {
                return Err(ConfigError::NotFound(format!(
                    "{key}[{i}] {:?} is of type {:?}, not anytls",
                    name,
                    list[i].kind.as_deref().unwrap_or("")
                )));
            }
            None => {
                let names: Vec<String> = anytls
                    .iter()
                    .filter_map(|&i| list[i].label().map(|l| format!("{l:?}")))
                    .collect();
                return Err(ConfigError::NotFound(format!(
                    "no entry named {name:?} in {key} (anytls entries: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        },
        None => *anytls.first().ok_or_else(|| {
            ConfigError::NotFound(format!("no entry of type \"anytls\" in {key}"))
        })?,
    };
    notes.taken(
        &format!("{key}[{chosen}]"),
        format!("using {}", list[chosen].describe()),
    );
    let others = anytls.iter().filter(|&&i| i != chosen).count();
    if others > 0 {
        notes.taken(
            key,
            format!(
                "{others} more anytls entr{} not used{}",
                if others == 1 { "y" } else { "ies" },
                // Only the client program chooses (its --proxy).
                if key == "inbounds" || key == "listeners" {
                    ""
                } else {
                    " (choose with --proxy NAME)"
                }
            ),
        );
    }
    Ok(chosen)
}

// ---------------------------------------------------------------------------
// Entry points

/// Parses what `anytls client -c` reads (see the [module docs](super)):
/// `format` `None` detects it from `name` and the text; `select` picks the
/// anytls outbound (sing-box `tag`) or proxy (mihomo `name`), else the first.
pub fn parse_client_config(
    text: &str,
    name: Option<&Path>,
    format: Option<ConfigFormat>,
    select: Option<&str>,
) -> Result<ClientOptions, ConfigError> {
    let src = Source::new(name, text, format)?;
    match src.format {
        ConfigFormat::Json => singbox::client_options(&src, select),
        ConfigFormat::Yaml => mihomo::client_options(&src, select),
    }
}

/// Parses what `anytls server -c` reads: a sing-box `anytls` inbound or whole
/// config, or a mihomo config with an `anytls` listener (or a bare one).
/// `select` picks the entry by `tag` / `name`, else the first.
pub fn parse_server_config(
    text: &str,
    name: Option<&Path>,
    format: Option<ConfigFormat>,
    select: Option<&str>,
) -> Result<ServerOptions, ConfigError> {
    let src = Source::new(name, text, format)?;
    match src.format {
        ConfigFormat::Json => singbox::server_options(&src, select),
        ConfigFormat::Yaml => mihomo::server_options(&src, select),
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        err,
    })
}

/// [`parse_client_config`] of a file.
pub fn load_client_config(path: &Path, select: Option<&str>) -> Result<ClientOptions, ConfigError> {
    parse_client_config(&read(path)?, Some(path), None, select)
}

/// [`parse_server_config`] of a file.
pub fn load_server_config(path: &Path, select: Option<&str>) -> Result<ServerOptions, ConfigError> {
    parse_server_config(&read(path)?, Some(path), None, select)
}
