//! The rotary embedding's `cos_sin_cache`, as vLLM computes it when the
//! model is built (`layers/rotary_embedding/base.py`
//! `RotaryEmbedding._compute_cos_sin_cache`, `llama3_rope.py`), step by step
//! in f32 as torch does, then cast to the model dtype. Every division and
//! product rounds as torch's does; `pow`, `cos` and `sin` are correctly
//! rounded here where torch's vectorised kernels may be 1 ulp off in f32
//! (`tests/vllm.rs` measures the difference against torch).

use crate::config::{Rope, RopeScaling};

/// The parameters of one rotary cache.
#[derive(Debug, Clone, PartialEq)]
pub struct RotarySpec {
    /// Rows: `max_position_embeddings`.
    pub max_position: usize,
    /// Columns: `rotary_dim` (cos half, then sin half).
    pub rotary_dim: usize,
    /// The base, scaling and partial factor.
    pub rope: Rope,
}

impl RotarySpec {
    /// The cache in f32, row-major `[max_position, rotary_dim]`.
    pub fn compute(&self) -> Vec<f32> {
        let inv_freq = self.inv_freq();
        let half = inv_freq.len();
        let mut cache = vec![0f32; self.max_position * 2 * half];
        for (t, row) in cache.chunks_mut(2 * half).enumerate() {
            let t = t as f32;
            for (j, &f) in inv_freq.iter().enumerate() {
                // einsum("i,j -> ij") rounds each product once.
                let angle = f64::from(t * f);
                row[j] = angle.cos() as f32;
                row[half + j] = angle.sin() as f32;
            }
        }
        cache
    }

    /// `1 / base^(arange(0, rotary_dim, 2) / rotary_dim)`, then the scaling.
    fn inv_freq(&self) -> Vec<f32> {
        let dim = self.rotary_dim as f32;
        let base = self.rope.theta as f32;
        let inv: Vec<f32> = (0..self.rotary_dim)
            .step_by(2)
            .map(|i| {
                let exponent = i as f32 / dim;
                let power = f64::from(base).powf(f64::from(exponent)) as f32;
                1.0 / power
            })
            .collect();
        match self.rope.scaling {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let (factor, low, high, orig) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position as f32,
                );
                let low_wavelen = (original_max_position / low_freq_factor) as f32;
                let high_wavelen = (original_max_position / high_freq_factor) as f32;
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                inv.iter()
                    .map(|&f| {
                        // torch's scalar / tensor is reciprocal(tensor) * scalar.
                        let wavelen = (1.0 / f) * two_pi;
                        let smooth = if low_freq_factor == high_freq_factor {
                            0.0
                        } else {
                            ((1.0 / wavelen) * orig - low) / (high - low)
                        };
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => inv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rows_are_cos_one_sin_zero_then_angles() {
        let spec = RotarySpec {
            max_position: 3,
            rotary_dim: 4,
            rope: Rope {
                theta: 10_000.0,
                scaling: RopeScaling::None,
                partial_rotary_factor: 1.0,
            },
        };
        let c = spec.compute();
        assert_eq!(&c[..4], &[1.0, 1.0, 0.0, 0.0]);
        // Position 1: inv_freq = [1, 1/100].
        assert_eq!(c[4], 1f64.cos() as f32);
        assert_eq!(c[5], f64::from(0.01f32).cos() as f32);
        assert_eq!(c[6], 1f64.sin() as f32);
        assert_eq!(c.len(), 12);
    }
}
