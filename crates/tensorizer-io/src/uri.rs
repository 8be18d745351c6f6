//! URIs as they may be shown: credentials in the userinfo (`user:pass@`)
//! and the query (presigned signatures, SAS tokens) are never printed,
//! logged or put in an error.

/// `uri` with its userinfo and query replaced by `***`; plain paths and
/// URIs without either come back unchanged.
///
/// ```
/// use tensorizer_io::redact_uri;
/// assert_eq!(redact_uri("https://u:p@host/m.tensors?sig=abc"), "https://***@host/m.tensors?***");
/// assert_eq!(redact_uri("redis://:secret@cache:6379/m"), "redis://***@cache:6379/m");
/// assert_eq!(redact_uri("/models/m.tensors"), "/models/m.tensors");
/// ```
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    // The userinfo ends at the last '@' before the query: a password may
    // hold an unencoded '/' or '#', which would otherwise seem to end the
    // authority early and leave the rest of the password shown. (An '@' in
    // a path then hides more than needed, never less.)
    let before_query = rest.find('?').unwrap_or(rest.len());
    let (userinfo_end, rest) = match rest[..before_query].rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    let authority = if userinfo_end {
        format!("***@{host}")
    } else {
        host.to_owned()
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let fragment = tail[q..].find('#').map_or("", |f| &tail[q + f..]);
            format!("{}?***{fragment}", &tail[..q])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A URI or path as it may be shown, the one way every message, log line
/// and report prints one: userinfo and query redacted ([`redact`]) and
/// control characters escaped (a name holding `ESC ]0;` would retitle a
/// terminal). It holds only the shown form; the secret is not in it.
///
/// ```
/// use tensorizer_io::ShownUri;
/// let shown = ShownUri::new("https://alice:pa/ss@host/m.tensors?sig=abc");
/// assert_eq!(shown.to_string(), "https://***@host/m.tensors?***");
/// assert_eq!(ShownUri::new("/m/\u{1b}]0;x").to_string(), "/m/\\u{1b}]0;x");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ShownUri(String);

impl ShownUri {
    /// The shown form of `uri`.
    pub fn new(uri: &str) -> Self {
        Self(escape_controls(&redact(uri)))
    }

    /// The shown form, as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ShownUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for ShownUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&str> for ShownUri {
    fn from(uri: &str) -> Self {
        Self::new(uri)
    }
}

impl From<&String> for ShownUri {
    fn from(uri: &String) -> Self {
        Self::new(uri)
    }
}

impl From<&std::path::Path> for ShownUri {
    fn from(path: &std::path::Path) -> Self {
        Self::new(&path.to_string_lossy())
    }
}

/// `text` safe for a terminal: control characters shown escaped
/// (`\u{1b}`), line breaks kept.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `text` with every URI in it redacted as [`redact`] does: messages of
/// the HTTP and object-store clients quote the URLs they requested, query
/// (a presigned signature, a SAS token, an upload session) included.
pub(crate) fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    text.split(' ')
        .map(|word| match word.find("://") {
            Some(at) => {
                // The scheme starts after any punctuation before it.
                let start = word[..at]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
                    .map_or(0, |i| i + 1);
                let end = word
                    .rfind(|c: char| !")],;:.'\"".contains(c))
                    .map_or(word.len(), |i| i + 1);
                if end <= start {
                    return word.to_owned();
                }
                format!(
                    "{}{}{}",
                    &word[..start],
                    redact(&word[start..end]),
                    &word[end..]
                )
            }
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Percent-encodes what may not appear raw in a URI's userinfo.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn percent_encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_redaction() {
        for (uri, shown) in [
            ("http://user:password@host/x", "http://***@host/x"),
            (
                "https://acct.blob.core.windows.net/c/m?sv=1&sig=SECRET",
                "https://acct.blob.core.windows.net/c/m?***",
            ),
            (
                "s3://bucket/key?X-Amz-Signature=SECRET#frag",
                "s3://bucket/key?***#frag",
            ),
            (
                "redis://:pw@127.0.0.1:6379/prefix",
                "redis://***@127.0.0.1:6379/prefix",
            ),
            // Unencoded '/', '#' and '@' in a password.
            ("https://alice:pa/ss@host/m", "https://***@host/m"),
            ("https://alice:pa#ss@host/m", "https://***@host/m"),
            ("https://alice:p@ss@host/m?sig=x", "https://***@host/m?***"),
            ("https://alice:s3cr3t@host", "https://***@host"),
            ("http://host?token=SECRET", "http://host?***"),
            ("gs://bucket/key", "gs://bucket/key"),
            ("relative/path.tensors", "relative/path.tensors"),
        ] {
            assert_eq!(redact(uri), shown);
            assert!(!redact(uri).contains("SECRET") && !redact(uri).contains("password"));
        }
    }

    #[test]
    fn uris_inside_messages_are_redacted() {
        let m = "error sending request for url (http://127.0.0.1:9/m.tensors?X-Amz-Signature=SECRET): refused";
        let shown = redact_text(m);
        assert_eq!(
            shown,
            "error sending request for url (http://127.0.0.1:9/m.tensors?***): refused"
        );
        assert_eq!(redact_text("no url here"), "no url here");
        assert!(!redact_text("GET https://u:pw@h/x?sig=S, then").contains("pw"));
    }

    #[test]
    fn userinfo_round_trips() {
        let raw = "p@ss:w/rd%";
        assert_eq!(percent_decode(&percent_encode_userinfo(raw)).unwrap(), raw);
        assert_eq!(percent_decode("%4"), None);
    }
}
