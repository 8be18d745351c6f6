//! What the sharding rules need from a Hugging Face `config.json`, read the
//! way `transformers` fills its defaults.

use serde_json::{Map, Value};
use tensorizer::Dtype;

use crate::error::{Result, VllmError};

/// A model's `config.json`, with typed access to the values the rules use.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    json: Map<String, Value>,
}

/// Rotary position embedding parameters (`rope_theta`, `rope_scaling` or
/// transformers 5's `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `rope_theta` (default 10 000).
    pub theta: f64,
    /// The scaling, if any.
    pub scaling: RopeScaling,
    /// `partial_rotary_factor` (default 1).
    pub partial_rotary_factor: f64,
}

/// The rotary scalings the rules compute (`layers/rotary_embedding/`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling (`base.py`, `RotaryEmbedding`).
    None,
    /// Llama 3.1's (`llama3_rope.py`, `Llama3RotaryEmbedding`).
    Llama3 {
        /// `factor`.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max_position: f64,
    },
    /// Another `rope_type`, which has no rule here.
    Other(String),
}

impl ModelConfig {
    /// Parses `config.json`'s text.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| VllmError::Json {
            what: "config.json".into(),
            source,
        })?;
        match value {
            Value::Object(json) => Ok(Self { json }),
            _ => Err(VllmError::Config {
                key: "<document>".into(),
                message: "is not a JSON object".into(),
            }),
        }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    /// The first entry of `architectures`, e.g. `LlamaForCausalLM`.
    pub fn architecture(&self) -> Result<&str> {
        self.get("architectures")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .ok_or_else(|| VllmError::Config {
                key: "architectures".into(),
                message: "missing: vLLM picks the model class from it".into(),
            })
    }

    /// A required unsigned integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| VllmError::Config {
            key: key.into(),
            message: "missing".into(),
        })
    }

    /// An optional unsigned integer.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| VllmError::Config {
                    key: key.into(),
                    message: format!("{v} is not a non-negative integer"),
                }),
        }
    }

    /// A number, or `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| VllmError::Config {
                key: key.into(),
                message: format!("{v} is not a number"),
            }),
        }
    }

    /// A boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| VllmError::Config {
                key: key.into(),
                message: format!("{v} is not true or false"),
            }),
        }
    }

    /// `torch_dtype` (or transformers 5's `dtype`) as a tensor dtype.
    pub fn dtype(&self) -> Result<Option<Dtype>> {
        let Some(v) = self.get("torch_dtype").or_else(|| self.get("dtype")) else {
            return Ok(None);
        };
        let name = v.as_str().unwrap_or_default();
        parse_dtype(name)
            .map(Some)
            .ok_or_else(|| VllmError::Config {
                key: "torch_dtype".into(),
                message: format!("{v} is not float16, bfloat16 or float32"),
            })
    }

    /// The rotary embedding parameters.
    pub fn rope(&self) -> Result<Rope> {
        let params = self.get("rope_parameters").and_then(Value::as_object);
        let scaling = self
            .get("rope_scaling")
            .and_then(Value::as_object)
            .or(params);
        let theta = match params.and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| VllmError::Config {
                key: "rope_parameters.rope_theta".into(),
                message: format!("{v} is not a number"),
            })?,
            None => self.f64_or("rope_theta", 10_000.0)?,
        };
        let scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let num = |key: &str| {
                    s.get(key)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| VllmError::Config {
                            key: format!("rope_scaling.{key}"),
                            message: "missing or not a number".into(),
                        })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position: num("original_max_position_embeddings")?,
                    },
                    other => RopeScaling::Other(other.to_owned()),
                }
            }
        };
        let partial_rotary_factor = match params.and_then(|p| p.get("partial_rotary_factor")) {
            Some(v) => v.as_f64().unwrap_or(1.0),
            None => self.f64_or("partial_rotary_factor", 1.0)?,
        };
        Ok(Rope {
            theta,
            scaling,
            partial_rotary_factor,
        })
    }
}

/// `float16` / `bfloat16` / `float32` (and torch's aliases).
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    Some(match name.trim_start_matches("torch.") {
        "float16" | "half" | "fp16" => Dtype::F16,
        "bfloat16" | "bf16" => Dtype::BF16,
        "float32" | "float" | "fp32" => Dtype::F32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_forms() {
        let c = ModelConfig::parse(r#"{"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#).unwrap();
        let r = c.rope().unwrap();
        assert_eq!(r.theta, 500_000.0);
        assert!(matches!(r.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        let c = ModelConfig::parse(
            r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 1000000}}"#,
        )
        .unwrap();
        assert_eq!(c.rope().unwrap().theta, 1e6);
        assert_eq!(c.rope().unwrap().scaling, RopeScaling::None);
        let c = ModelConfig::parse(r#"{"rope_scaling": {"type": "yarn", "factor": 4}}"#).unwrap();
        assert_eq!(c.rope().unwrap().scaling, RopeScaling::Other("yarn".into()));
    }

    #[test]
    fn typed_errors_name_the_key() {
        let c = ModelConfig::parse(r#"{"hidden_size": "big"}"#).unwrap();
        let e = c.usize("hidden_size").unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        assert!(
            c.usize("vocab_size")
                .unwrap_err()
                .to_string()
                .contains("vocab_size")
        );
    }
}
