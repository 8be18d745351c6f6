//! Tensor names: plain UTF-8 strings or structured paths (FORMAT.md §3.3).
//!
//! A name is a path of string keys and integer indices. A path of exactly one
//! string is stored as its UTF-8 bytes; every other path as the byte `0x1E`
//! followed by a compact, ASCII-only JSON array, exactly as Python's
//! `json.dumps(..., ensure_ascii=True, separators=(",", ":"))` writes it.

use std::fmt::{self, Write as _};

use crate::error::{FormatError, Result};

/// The marker byte that starts a structured (JSON) name.
pub const STRUCTURED_NAME_MARKER: u8 = 0x1E;

/// One component of a [`TensorPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathComponent {
    /// A list position (nested state dicts made of lists).
    Index(u64),
    /// A mapping key.
    Key(String),
}

impl From<&str> for PathComponent {
    fn from(s: &str) -> Self {
        PathComponent::Key(s.to_owned())
    }
}

impl From<String> for PathComponent {
    fn from(s: String) -> Self {
        PathComponent::Key(s)
    }
}

impl From<u64> for PathComponent {
    fn from(i: u64) -> Self {
        PathComponent::Index(i)
    }
}

/// The logical name of a tensor: a non-empty sequence of components.
///
/// `TensorPath::from("model.embed.weight")` is the usual single-key name; the
/// Python library normalizes such a path to a plain `str` and every other to a
/// tuple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorPath(Vec<PathComponent>);

impl TensorPath {
    /// Builds a path; `None` if `components` is empty.
    pub fn new(components: Vec<PathComponent>) -> Option<Self> {
        (!components.is_empty()).then_some(Self(components))
    }

    /// The components, outermost first.
    pub fn components(&self) -> &[PathComponent] {
        &self.0
    }

    /// The single string of a plain name, `None` for structured paths.
    pub fn as_plain(&self) -> Option<&str> {
        match self.0.as_slice() {
            [PathComponent::Key(k)] => Some(k),
            _ => None,
        }
    }

    /// Encodes the path as the Python writer does. A single key that starts
    /// with the marker byte is written structured (`0x1E["\u001e..."]`):
    /// stored plain, it would read back as a malformed structured name.
    pub fn encode(&self) -> Vec<u8> {
        if let Some(plain) = self
            .as_plain()
            .filter(|p| !p.starts_with(STRUCTURED_NAME_MARKER as char))
        {
            return plain.as_bytes().to_vec();
        }
        let mut out = String::with_capacity(16 * self.0.len());
        out.push(STRUCTURED_NAME_MARKER as char);
        out.push('[');
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match c {
                PathComponent::Index(n) => {
                    let _ = write!(out, "{n}");
                }
                PathComponent::Key(k) => write_json_string(&mut out, k),
            }
        }
        out.push(']');
        out.into_bytes()
    }

    /// Decodes stored name bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let invalid = |reason: &str| FormatError::InvalidName {
            name: String::from_utf8_lossy(bytes).into_owned(),
            reason: reason.to_owned(),
        };
        if bytes.is_empty() {
            return Err(invalid("empty tensor name"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not valid UTF-8"))?;
        if bytes[0] != STRUCTURED_NAME_MARKER {
            return Ok(Self(vec![PathComponent::Key(text.to_owned())]));
        }
        if bytes.len() < 3 || bytes[1] != b'[' || bytes[bytes.len() - 1] != b']' {
            return Err(invalid(
                "structured name must be 0x1E followed by a JSON array",
            ));
        }
        if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
            return Err(invalid("structured name contains a line break"));
        }
        let components = JsonArray::new(&text[1..])
            .parse()
            .map_err(|e| invalid(&format!("bad JSON path: {e}")))?;
        Self::new(components).ok_or_else(|| invalid("empty tensor path"))
    }
}

impl From<&str> for TensorPath {
    fn from(s: &str) -> Self {
        Self(vec![PathComponent::Key(s.to_owned())])
    }
}

impl From<String> for TensorPath {
    fn from(s: String) -> Self {
        Self(vec![PathComponent::Key(s)])
    }
}

impl fmt::Display for TensorPath {
    /// Plain names print as themselves; structured ones as their JSON array.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_plain() {
            Some(p) => f.write_str(p),
            None => {
                let encoded = self.encode();
                f.write_str(&String::from_utf8_lossy(&encoded[1..]))
            }
        }
    }
}

/// Python `json.dumps` string escaping with `ensure_ascii=True`.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A strict parser for the one JSON shape names use: an array of strings and
/// non-negative integers.
struct JsonArray<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> JsonArray<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            pos: 0,
        }
    }

    fn parse(mut self) -> Result<Vec<PathComponent>, String> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                out.push(self.component()?);
                self.skip_ws();
                match self.next() {
                    Some(b',') => continue,
                    Some(b']') => break,
                    _ => return Err(format!("expected ',' or ']' at byte {}", self.pos)),
                }
            }
        }
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err("trailing characters after the array".into());
        }
        Ok(out)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        match self.next() {
            Some(x) if x == b => Ok(()),
            _ => Err(format!("expected '{}' at byte {}", b as char, self.pos)),
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn component(&mut self) -> Result<PathComponent, String> {
        match self.peek() {
            Some(b'"') => self.string().map(PathComponent::Key),
            Some(b'0'..=b'9') => self.integer().map(PathComponent::Index),
            _ => Err(format!(
                "path components must be strings or non-negative integers (byte {})",
                self.pos
            )),
        }
    }

    fn integer(&mut self) -> Result<u64, String> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        let digits = &self.s[start..self.pos];
        if digits.len() > 1 && digits[0] == b'0' {
            return Err("integer with a leading zero".into());
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err("path components must be integers, not floats".into());
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| "integer out of range".into())
    }

    fn hex4(&mut self) -> Result<u16, String> {
        let end = self.pos + 4;
        let digits = self.s.get(self.pos..end).ok_or("truncated \\u escape")?;
        let text = std::str::from_utf8(digits).map_err(|_| "bad \\u escape")?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("bad \\u escape".into());
        }
        self.pos = end;
        u16::from_str_radix(text, 16).map_err(|_| "bad \\u escape".into())
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The input came from a &str and we stopped on ASCII, so this is valid UTF-8.
            out.push_str(std::str::from_utf8(&self.s[start..self.pos]).map_err(|e| e.to_string())?);
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => {}
                Some(_) => return Err("control character in string".into()),
                None => return Err("unterminated string".into()),
            }
            let ch = match self.next() {
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{08}',
                Some(b'f') => '\u{0c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    let hi = self.hex4()?;
                    if (0xD800..0xDC00).contains(&hi) {
                        if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                            return Err("lone high surrogate".into());
                        }
                        let lo = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&lo) {
                            return Err("invalid low surrogate".into());
                        }
                        let cp =
                            0x10000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                        char::from_u32(cp).ok_or("invalid code point")?
                    } else {
                        char::from_u32(u32::from(hi)).ok_or("lone low surrogate")?
                    }
                }
                _ => return Err("invalid escape".into()),
            };
            out.push(ch);
        }
    }
}

/// Checks that no two paths are equal, none is a prefix of another, and no
/// level mixes string keys with integer indices (the Python reader rejects
/// all three while building its index).
pub fn check_paths_distinct<'p>(paths: impl IntoIterator<Item = &'p TensorPath>) -> Result<()> {
    let mut sorted: Vec<&TensorPath> = paths.into_iter().collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .try_for_each(|pair| check_pair(pair[0], pair[1]))
}

/// The paths of a file written so far, checked as each one arrives (a
/// streaming writer's [`check_paths_distinct`]).
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    paths: std::collections::BTreeSet<TensorPath>,
}

impl PathSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` unless it conflicts with one already there. In sorted
    /// order a path that conflicts with any member conflicts with a
    /// neighbour (the members being conflict-free), so two comparisons do.
    pub fn insert(&mut self, path: &TensorPath) -> Result<()> {
        use std::ops::Bound::{Excluded, Unbounded};
        if let Some(before) = self.paths.range(..path).next_back() {
            check_pair(before, path)?;
        }
        if let Some(after) = self.paths.range((Excluded(path), Unbounded)).next() {
            check_pair(path, after)?;
        }
        if !self.paths.insert(path.clone()) {
            return Err(FormatError::ConflictingNames(format!(
                "{path} and {path}: the same name appears twice"
            )));
        }
        Ok(())
    }

    /// Number of paths.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// The rule for two paths `a <= b` in sorted order.
fn check_pair(a: &TensorPath, b: &TensorPath) -> Result<()> {
    let (x, y) = (a.components(), b.components());
    let common = x.iter().zip(y).take_while(|(p, q)| p == q).count();
    let problem = if common == x.len() && common == y.len() {
        Some("the same name appears twice")
    } else if common == x.len() || common == y.len() {
        Some("one name is a prefix of the other")
    } else {
        let kinds_differ = matches!(
            (&x[common], &y[common]),
            (PathComponent::Index(_), PathComponent::Key(_))
                | (PathComponent::Key(_), PathComponent::Index(_))
        );
        kinds_differ.then_some("one level mixes string keys and integer indices")
    };
    match problem {
        Some(problem) => Err(FormatError::ConflictingNames(format!(
            "{a} and {b}: {problem}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[PathComponent]) -> TensorPath {
        TensorPath::new(parts.to_vec()).unwrap()
    }

    #[test]
    fn encodes_like_python_json_dumps() {
        let p = path(&["model".into(), "layer".into(), 0.into(), "weight".into()]);
        assert_eq!(p.encode(), b"\x1e[\"model\",\"layer\",0,\"weight\"]");
        let p = path(&["\u{e9}".into(), 0.into()]);
        assert_eq!(p.encode(), b"\x1e[\"\\u00e9\",0]");
        let p = path(&["\u{1F600}\"\\\n\u{1}\u{7f}".into(), 1.into()]);
        assert_eq!(
            p.encode(),
            b"\x1e[\"\\ud83d\\ude00\\\"\\\\\\n\\u0001\x7f\",1]"
        );
        assert_eq!(TensorPath::from("a.b").encode(), b"a.b");
        assert_eq!(path(&[3.into()]).encode(), b"\x1e[3]");
    }

    #[test]
    fn decodes_what_it_encodes() {
        for p in [
            path(&["x".into(), 0.into(), "é😀\t".into()]),
            path(&[0.into()]),
            TensorPath::from("plain ünï"),
        ] {
            assert_eq!(TensorPath::decode(&p.encode()).unwrap(), p);
        }
        assert_eq!(
            TensorPath::decode(b"\x1e[ \"a\" , 1 ]").unwrap(),
            path(&["a".into(), 1.into()])
        );
    }

    /// The first crash the fuzzer found (fuzz/regressions/tensor_path).
    #[test]
    fn a_key_starting_with_the_marker_round_trips() {
        let p = TensorPath::decode(b"\x1e[\"\\u001e9\"]").unwrap();
        assert_eq!(p, TensorPath::from("\u{1e}9"));
        assert_eq!(p.encode(), b"\x1e[\"\\u001e9\"]");
        assert_eq!(TensorPath::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            &b""[..],
            b"\x1e",
            b"\x1e[]",
            b"\x1e[1.5]",
            b"\x1e[-1]",
            b"\x1e[01]",
            b"\x1e[true]",
            b"\x1e[[1]]",
            b"\x1e[{}]",
            b"\x1e[\"a\"",
            b"\x1e[\"a\"]x",
            b"\x1e[\"\\ud800\"]",
            b"\x1e[\"a\n\"]",
            b"\x1e[99999999999999999999999]",
            b"\xff",
        ] {
            assert!(TensorPath::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_conflicts() {
        let a = TensorPath::from("a");
        let a0 = path(&["a".into(), 0.into()]);
        let ab = path(&["a".into(), "b".into()]);
        let b = TensorPath::from("b");
        assert!(check_paths_distinct([&a, &b]).is_ok());
        assert!(check_paths_distinct([&a, &b, &a]).is_err());
        assert!(check_paths_distinct([&a, &a0]).is_err());
        assert!(check_paths_distinct([&a0, &b, &ab]).is_err());
        assert!(check_paths_distinct([&a0, &b]).is_ok());
    }
}
