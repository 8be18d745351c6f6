//! JSON spelled as Python's `json.dumps` spells it (`", "` and `": "`
//! separators, non-ASCII escaped as `\uXXXX`), keeping the input's key
//! order and number spellings: vLLM's `tensorize_lora_adapter` writes
//! `adapter_config.json` with `json.dumps(json.load(f))`.

use crate::error::{Result, VllmError};

/// Re-spells a JSON document the way `json.dumps` prints it.
pub fn dumps(text: &str) -> Result<String> {
    // Validate first: the re-spelling below trusts the structure.
    serde_json::from_str::<serde_json::Value>(text).map_err(|source| VllmError::Json {
        what: "adapter_config.json".into(),
        source,
    })?;
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            out.push('\\');
                            if let Some(e) = chars.next() {
                                out.push(e);
                            }
                        }
                        '"' => break,
                        c if c.is_ascii() => out.push(c),
                        c => {
                            let mut units = [0u16; 2];
                            for u in c.encode_utf16(&mut units) {
                                out.push_str(&format!("\\u{u:04x}"));
                            }
                        }
                    }
                }
                out.push('"');
            }
            ',' => out.push_str(", "),
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_like_python() {
        let input = "{\n  \"r\": 8,\n  \"target_modules\": [\"q_proj\", \"v_proj\"],\n  \"note\": \"caf\u{e9} \\\" ,:\",\n  \"alpha\": 0.05,\n  \"x\": {}\n}\n";
        assert_eq!(
            dumps(input).unwrap(),
            r#"{"r": 8, "target_modules": ["q_proj", "v_proj"], "note": "caf\u00e9 \" ,:", "alpha": 0.05, "x": {}}"#
        );
        assert!(dumps("{").is_err());
    }
}
