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
    // The authority ends at the first '/', '?' or '#'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
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
