//! Per-rank plans: which tensors each tensor-parallel rank's file holds, in
//! the order and under the names vLLM's `serialize_vllm_model` writes them
//! (`TensorSerializer.write_module`: modules in `named_modules()` order,
//! parameters then buffers, named `"{module}.{attr}"`), and which slices of
//! which checkpoint tensors make each one. Plans are small; the bytes are
//! read slice by slice when a file is written ([`PlannedTensor::fill`]).

use std::ops::Range;

use tensorizer::{Dtype, TensorType};

use crate::checkpoint::{Checkpoint, cast_into};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Result, VllmError};
use crate::rotary::RotarySpec;
use crate::rules::{self, Architecture, Bias, Dim, Kind, Rule, When};

/// vLLM pads vocabularies to a multiple of this before splitting them
/// (`layers/vocab_parallel_embedding.py` `DEFAULT_VOCAB_PADDING_SIZE`).
pub const VOCAB_PADDING: u64 = 64;

/// One rank's file.
#[derive(Debug, Clone)]
pub struct RankPlan {
    /// The rank.
    pub rank: usize,
    /// Its tensors, in write order.
    pub tensors: Vec<PlannedTensor>,
}

impl RankPlan {
    /// Bytes of tensor data in this rank's file.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(PlannedTensor::data_len).sum()
    }
}

/// One tensor of a rank's file.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    /// vLLM's name, e.g. `model.layers.0.self_attn.qkv_proj.weight`.
    pub name: String,
    /// Position of its module in `named_modules()`.
    pub module_idx: u16,
    /// Parameter or buffer.
    pub tensor_type: TensorType,
    /// Element type.
    pub dtype: Dtype,
    /// This rank's shape.
    pub shape: Vec<u64>,
    /// Where its bytes come from.
    pub content: Content,
    /// The rule that made it, with its vLLM source.
    pub rule: &'static str,
}

/// Where a planned tensor's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A meta tensor (no data; loads as zeros).
    Meta,
    /// Every element this f32 value.
    Constant(f32),
    /// The rotary cache.
    Rotary(RotarySpec),
    /// Pieces stacked along the first dimension.
    Rows(Vec<Piece>),
}

/// A run of rows of a rank's tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Rows of a checkpoint tensor, optionally only some columns of each.
    Slice {
        /// The checkpoint tensor's name.
        tensor: String,
        /// Rows (first dimension).
        rows: Range<u64>,
        /// Columns (second dimension), all when `None`.
        cols: Option<Range<u64>>,
    },
    /// Zero rows (vocabulary padding).
    Zeros {
        /// How many.
        rows: u64,
    },
}

impl PlannedTensor {
    /// Bytes of data.
    pub fn data_len(&self) -> u64 {
        match self.content {
            Content::Meta => 0,
            _ => self.shape.iter().product::<u64>() * self.dtype.itemsize() as u64,
        }
    }

    /// Writes this tensor's bytes into `out` (exactly [`Self::data_len`]
    /// bytes), reading only the checkpoint slices it needs.
    pub fn fill(&self, checkpoint: &Checkpoint, out: &mut [u8]) -> Result<()> {
        match &self.content {
            Content::Meta => {}
            Content::Constant(v) => {
                let one = v.to_le_bytes();
                let mut elem = vec![0u8; self.dtype.itemsize()];
                cast_into(&one, Dtype::F32, &mut elem, self.dtype)
                    .map_err(|_| self.cast_error())?;
                for chunk in out.chunks_mut(elem.len()) {
                    chunk.copy_from_slice(&elem);
                }
            }
            Content::Rotary(spec) => {
                let cache: Vec<u8> = spec
                    .compute()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                cast_into(&cache, Dtype::F32, out, self.dtype).map_err(|_| self.cast_error())?;
            }
            Content::Rows(pieces) => {
                let row_elems: u64 = self.shape.iter().skip(1).product();
                let row_bytes = (row_elems as usize) * self.dtype.itemsize();
                let mut at = 0;
                for piece in pieces {
                    match piece {
                        Piece::Slice { tensor, rows, cols } => {
                            at += checkpoint.copy_slice(
                                tensor,
                                rows.clone(),
                                cols.clone(),
                                self.dtype,
                                &mut out[at..],
                            )?;
                        }
                        Piece::Zeros { rows } => {
                            let n = *rows as usize * row_bytes;
                            out[at..at + n].fill(0);
                            at += n;
                        }
                    }
                }
                debug_assert_eq!(at, out.len(), "{}: pieces cover the tensor", self.name);
            }
        }
        Ok(())
    }

    fn cast_error(&self) -> VllmError {
        VllmError::Invalid {
            what: format!("tensor {:?}", self.name),
            message: format!("cannot be made in {}", self.dtype),
        }
    }
}

/// The sizes `config.json` gives, as vLLM's model classes read them.
#[derive(Debug, Clone)]
struct Dims {
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    intermediate: u64,
    vocab: u64,
    layers: usize,
    word_embed_proj: u64,
    max_position: Option<u64>,
    tied: bool,
}

impl Dims {
    fn new(c: &ModelConfig, arch: &Architecture) -> Result<Self> {
        let hidden = c.usize("hidden_size")? as u64;
        let heads = c.usize("num_attention_heads")? as u64;
        let kv_heads = c
            .opt_usize("num_key_value_heads")?
            .map_or(heads, |k| k as u64);
        if heads == 0 || kv_heads == 0 {
            return Err(VllmError::Config {
                key: "num_attention_heads".into(),
                message: "must be positive".into(),
            });
        }
        let head_dim = c
            .opt_usize("head_dim")?
            .map_or(hidden / heads, |d| d as u64);
        let intermediate = match c.opt_usize("intermediate_size")? {
            Some(i) => i as u64,
            None => c.usize("ffn_dim")? as u64,
        };
        Ok(Self {
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate,
            vocab: c.usize("vocab_size")? as u64,
            layers: c.usize("num_hidden_layers")?,
            word_embed_proj: c
                .opt_usize("word_embed_proj_dim")?
                .map_or(hidden, |d| d as u64),
            max_position: c.opt_usize("max_position_embeddings")?.map(|d| d as u64),
            tied: c.bool_or("tie_word_embeddings", arch.tie_default)?,
        })
    }

    fn size(&self, d: Dim) -> Result<u64> {
        Ok(match d {
            Dim::Hidden => self.hidden,
            Dim::QHeads => self.heads * self.head_dim,
            Dim::Intermediate => self.intermediate,
            Dim::Vocab => self.vocab,
            Dim::WordEmbedProj => self.word_embed_proj,
            Dim::PositionsPlus2 => self.max_position()? + 2,
        })
    }

    fn max_position(&self) -> Result<u64> {
        self.max_position.ok_or_else(|| VllmError::Config {
            key: "max_position_embeddings".into(),
            message: "missing".into(),
        })
    }
}

/// The per-rank plans for a checkpoint: the rules of `arch` applied to
/// its `config.json`, every checkpoint tensor they read checked for
/// presence and shape.
pub fn shard(
    checkpoint: &Checkpoint,
    arch: &Architecture,
    tp: usize,
    dtype: Dtype,
) -> Result<Vec<RankPlan>> {
    plan(&checkpoint.config, arch, tp, dtype, Some(checkpoint))
}

/// The per-rank plans from `config.json` alone (names, shapes, dtypes;
/// the checkpoint names in the pieces are not checked).
pub fn plan_from_config(
    config: &ModelConfig,
    arch: &Architecture,
    tp: usize,
    dtype: Dtype,
) -> Result<Vec<RankPlan>> {
    plan(config, arch, tp, dtype, None)
}

fn plan(
    config: &ModelConfig,
    arch: &Architecture,
    tp: usize,
    dtype: Dtype,
    checkpoint: Option<&Checkpoint>,
) -> Result<Vec<RankPlan>> {
    if tp == 0 {
        return Err(VllmError::Invalid {
            what: "--tensor-parallel-size".into(),
            message: "must be at least 1".into(),
        });
    }
    let planner = Planner {
        config,
        dims: Dims::new(config, arch)?,
        arch,
        tp: tp as u64,
        dtype,
        checkpoint,
    };
    (0..tp)
        .map(|rank| {
            Ok(RankPlan {
                rank,
                tensors: planner.rank(rank as u64)?,
            })
        })
        .collect()
}

struct Planner<'a> {
    config: &'a ModelConfig,
    dims: Dims,
    arch: &'a Architecture,
    tp: u64,
    dtype: Dtype,
    checkpoint: Option<&'a Checkpoint>,
}

/// One checkpoint tensor a rule reads, resolved.
struct Source {
    name: String,
    shape: Vec<u64>,
}

impl Planner<'_> {
    fn rank(&self, rank: u64) -> Result<Vec<PlannedTensor>> {
        let mut out = Vec::new();
        let mut module_idx = 0usize;
        let mut visit = |rule: &Rule, module: String, layer: Option<usize>| -> Result<()> {
            let exists = match rule.when {
                When::Always => true,
                When::FirstLayer => layer == Some(0),
                When::ProjectionDiffers => self.dims.word_embed_proj != self.dims.hidden,
                When::FinalLayerNorm => {
                    self.config.bool_or("do_layer_norm_before", true)?
                        && !self.config.bool_or("_remove_final_layer_norm", false)?
                }
            };
            if !exists {
                return Ok(());
            }
            let idx = u16::try_from(module_idx).map_err(|_| VllmError::Invalid {
                what: "model".into(),
                message: "more than 65 535 modules do not fit the format's module index".into(),
            })?;
            module_idx += 1;
            let hf: Vec<String> = rule
                .hf
                .iter()
                .map(|h| match layer {
                    Some(i) => format!(
                        "{}{h}",
                        self.arch.layer_prefix.replace("{i}", &i.to_string())
                    ),
                    None => (*h).to_owned(),
                })
                .collect();
            self.module(rule, &module, idx, &hf, rank, &mut out)
        };
        for rule in self.arch.head {
            visit(rule, rule.module.to_owned(), None)?;
        }
        for i in 0..self.dims.layers {
            let prefix = self.arch.layer_prefix.replace("{i}", &i.to_string());
            for rule in self.arch.layer {
                visit(rule, format!("{prefix}{}", rule.module), Some(i))?;
            }
        }
        for rule in self.arch.tail {
            visit(rule, rule.module.to_owned(), None)?;
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn module(
        &self,
        rule: &Rule,
        module: &str,
        idx: u16,
        hf: &[String],
        rank: u64,
        out: &mut Vec<PlannedTensor>,
    ) -> Result<()> {
        let tp = self.tp;
        let bias = match rule.bias {
            Bias::Never => false,
            Bias::Always => true,
            Bias::Config(key, default) => self.config.bool_or(key, default)?,
        };
        let mut push = |attr: &str, tensor_type, dtype, shape: Vec<u64>, content| {
            out.push(PlannedTensor {
                name: format!("{module}.{attr}"),
                module_idx: idx,
                tensor_type,
                dtype,
                shape,
                content,
                rule: rule.source,
            })
        };
        let param = TensorType::Param;
        let dtype = self.dtype;
        let expected =
            |r: &Rule| -> Result<Vec<u64>> { r.shape.iter().map(|&d| self.dims.size(d)).collect() };
        match rule.kind {
            Kind::Container => {}
            Kind::Marker => push(
                "vllm_tensorized_marker",
                param,
                Dtype::I64,
                vec![1],
                Content::Meta,
            ),
            Kind::AttentionScales => {
                for attr in ["_k_scale", "_v_scale", "_q_scale", "_prob_scale"] {
                    push(
                        attr,
                        TensorType::Buffer,
                        Dtype::F32,
                        vec![],
                        Content::Constant(1.0),
                    );
                }
            }
            Kind::Rotary => {
                let rope = self.config.rope()?;
                if let RopeScaling::Other(kind) = &rope.scaling {
                    return Err(VllmError::NoRules {
                        what: format!("rope_scaling type {kind:?}"),
                        known: "no scaling, llama3".into(),
                    });
                }
                let rotary_dim = (self.dims.head_dim as f64 * rope.partial_rotary_factor) as usize;
                let max_position = self.dims.max_position()? as usize;
                let spec = RotarySpec {
                    max_position,
                    rotary_dim,
                    rope,
                };
                push(
                    "cos_sin_cache",
                    TensorType::Buffer,
                    dtype,
                    vec![max_position as u64, rotary_dim as u64],
                    Content::Rotary(spec),
                );
            }
            Kind::Replicated => {
                let shape = expected(rule)?;
                let w = self.source(&hf[0], "weight", module, &shape, rule)?;
                push("weight", param, dtype, shape.clone(), whole(&w));
                if bias {
                    let b = self.source(&hf[0], "bias", module, &shape[..1], rule)?;
                    push("bias", param, dtype, shape[..1].to_vec(), whole(&b));
                }
            }
            Kind::Column => {
                let shape = expected(rule)?;
                let part = self.divide(shape[0], "output size", rule)?;
                let rows = rank * part..(rank + 1) * part;
                let w = self.source(&hf[0], "weight", module, &shape, rule)?;
                push(
                    "weight",
                    param,
                    dtype,
                    vec![part, shape[1]],
                    rows_of(&w, rows.clone()),
                );
                if bias {
                    let b = self.source(&hf[0], "bias", module, &shape[..1], rule)?;
                    push("bias", param, dtype, vec![part], rows_of(&b, rows));
                }
            }
            Kind::Row => {
                let shape = expected(rule)?;
                let part = self.divide(shape[1], "input size", rule)?;
                let w = self.source(&hf[0], "weight", module, &shape, rule)?;
                push(
                    "weight",
                    param,
                    dtype,
                    vec![shape[0], part],
                    Content::Rows(vec![Piece::Slice {
                        tensor: w.name,
                        rows: 0..shape[0],
                        cols: Some(rank * part..(rank + 1) * part),
                    }]),
                );
                if bias {
                    let b = self.source(&hf[0], "bias", module, &shape[..1], rule)?;
                    push("bias", param, dtype, shape[..1].to_vec(), whole(&b));
                }
            }
            Kind::Qkv => {
                let d = &self.dims;
                let q_heads = self.divide(d.heads, "num_attention_heads", rule)?;
                // QKVParallelLinear: fewer KV heads than ranks are replicated.
                let (kv_heads, replicas) = if tp >= d.kv_heads {
                    if !tp.is_multiple_of(d.kv_heads) {
                        return Err(self.parallel(
                            format!(
                                "does not divide into num_key_value_heads {} replicas",
                                d.kv_heads
                            ),
                            rule,
                        ));
                    }
                    (1, tp / d.kv_heads)
                } else {
                    (self.divide(d.kv_heads, "num_key_value_heads", rule)?, 1)
                };
                let hd = d.head_dim;
                let q_rows = rank * q_heads * hd..(rank + 1) * q_heads * hd;
                let kv_rank = rank / replicas;
                let kv_rows = kv_rank * kv_heads * hd..(kv_rank + 1) * kv_heads * hd;
                let total = (q_heads + 2 * kv_heads) * hd;
                let full = [d.heads * hd, d.kv_heads * hd, d.kv_heads * hd];
                let ranges = [q_rows, kv_rows.clone(), kv_rows];
                let mut attrs = vec![("weight", vec![total, d.hidden])];
                if bias {
                    attrs.push(("bias", vec![total]));
                }
                for (attr, shape) in attrs {
                    let mut pieces = Vec::new();
                    for ((h, rows), rows_total) in hf.iter().zip(&ranges).zip(full) {
                        let mut want = vec![rows_total];
                        want.extend_from_slice(&shape[1..]);
                        let s = self.source(h, attr, module, &want, rule)?;
                        pieces.push(Piece::Slice {
                            tensor: s.name,
                            rows: rows.clone(),
                            cols: None,
                        });
                    }
                    push(attr, param, dtype, shape, Content::Rows(pieces));
                }
            }
            Kind::MergedColumn => {
                let shape = expected(rule)?;
                let part = self.divide(shape[0], "intermediate size", rule)?;
                let rows = rank * part..(rank + 1) * part;
                let mut attrs = vec![("weight", vec![2 * part, shape[1]], shape.clone())];
                if bias {
                    attrs.push(("bias", vec![2 * part], shape[..1].to_vec()));
                }
                for (attr, out_shape, want) in attrs {
                    let pieces = hf
                        .iter()
                        .map(|h| {
                            Ok(Piece::Slice {
                                tensor: self.source(h, attr, module, &want, rule)?.name,
                                rows: rows.clone(),
                                cols: None,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    push(attr, param, dtype, out_shape, Content::Rows(pieces));
                }
            }
            Kind::Vocab { tied_to } => {
                let shape = expected(rule)?;
                let from = match tied_to {
                    Some(t) if self.dims.tied => t,
                    _ => &hf[0],
                };
                let w = self.source(from, "weight", module, &shape, rule)?;
                let vocab = shape[0];
                let padded = vocab.div_ceil(VOCAB_PADDING) * VOCAB_PADDING;
                let part = self.divide(padded, "padded vocabulary", rule)?;
                let start = (rank * part).min(vocab);
                let end = ((rank + 1) * part).min(vocab);
                let mut pieces = Vec::new();
                if end > start {
                    pieces.push(Piece::Slice {
                        tensor: w.name,
                        rows: start..end,
                        cols: None,
                    });
                }
                if part > end - start {
                    pieces.push(Piece::Zeros {
                        rows: part - (end - start),
                    });
                }
                push(
                    "weight",
                    param,
                    dtype,
                    vec![part, shape[1]],
                    Content::Rows(pieces),
                );
            }
        }
        Ok(())
    }

    /// `n / tp`, or an error naming what does not divide.
    fn divide(&self, n: u64, what: &str, rule: &Rule) -> Result<u64> {
        if !n.is_multiple_of(self.tp) {
            return Err(self.parallel(format!("does not divide {what} {n}"), rule));
        }
        Ok(n / self.tp)
    }

    fn parallel(&self, message: String, rule: &Rule) -> VllmError {
        VllmError::Parallel {
            tp: self.tp as usize,
            message,
            rule: rule.source.into(),
        }
    }

    /// The checkpoint tensor `{hf}.{attr}`, present and of shape `want`.
    fn source(
        &self,
        hf: &str,
        attr: &str,
        module: &str,
        want: &[u64],
        rule: &Rule,
    ) -> Result<Source> {
        let name = format!("{hf}.{attr}");
        let Some(ckpt) = self.checkpoint else {
            return Ok(Source {
                name,
                shape: want.to_vec(),
            });
        };
        let found = std::iter::once(name.clone())
            .chain(
                self.arch
                    .hf_aliases
                    .iter()
                    .filter_map(|(alias, canonical)| {
                        name.strip_prefix(canonical)
                            .map(|rest| format!("{alias}{rest}"))
                    }),
            )
            .find_map(|n| ckpt.get(&n).map(|t| (n, t.shape.clone())));
        let Some((name, shape)) = found else {
            return Err(VllmError::MissingTensor {
                tensor: name,
                needed_for: format!("{module}.{attr}"),
                rule: rule.source.into(),
            });
        };
        if shape != want {
            return Err(VllmError::Shape {
                tensor: name,
                actual: shape,
                expected: want.to_vec(),
                rule: rule.source.into(),
            });
        }
        Ok(Source { name, shape })
    }
}

fn whole(s: &Source) -> Content {
    rows_of(s, 0..s.shape.first().copied().unwrap_or(1))
}

fn rows_of(s: &Source, rows: Range<u64>) -> Content {
    Content::Rows(vec![Piece::Slice {
        tensor: s.name.clone(),
        rows,
        cols: None,
    }])
}

/// The rules for this checkpoint's architecture, or why there are none.
pub fn architecture_of(config: &ModelConfig) -> Result<&'static Architecture> {
    let arch = config.architecture()?;
    rules::find(arch).ok_or_else(|| VllmError::NoRules {
        what: arch.to_owned(),
        known: rules::known(),
    })
}
