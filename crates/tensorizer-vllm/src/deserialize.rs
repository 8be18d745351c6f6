//! `tensorizer vllm deserialize`: load every rank's file of a serialized
//! model as vLLM's loader does (the `%0Nd` template expanded per rank, the
//! key file read, hashes checked when asked), and time it.

use std::time::Instant;

use crate::error::{Result, VllmError};
use crate::tensorizer_config::TensorizerConfig;

/// Where the ranks load to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// Rank `r` onto GPU `r` (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
}

/// One rank's load.
#[derive(Debug, Clone)]
pub struct RankLoad {
    /// The rank.
    pub rank: usize,
    /// Its file.
    pub uri: String,
    /// Tensors loaded.
    pub tensors: usize,
    /// Tensor bytes loaded.
    pub bytes: u64,
    /// Seconds from opening to the last byte.
    pub seconds: f64,
}

/// Loads ranks `0..tp` of `config`'s model, one after another, each
/// dropped once loaded; `on_rank` sees each as it finishes.
pub fn load_ranks(
    config: &TensorizerConfig,
    tp: usize,
    device: Device,
    on_rank: &mut dyn FnMut(&RankLoad),
) -> Result<Vec<RankLoad>> {
    if tp > 1 && !config.is_sharded() {
        return Err(VllmError::Invalid {
            what: "tensorizer_uri".into(),
            message: format!(
                "{} has no %03d-style rank placeholder, which vLLM needs for tensor parallel size {tp}",
                config.uri()
            ),
        });
    }
    let mut loads = Vec::new();
    for rank in 0..tp.max(1) {
        let start = Instant::now();
        let d = config.open_rank(rank)?;
        let (tensors, bytes) = match device {
            Device::Cpu => {
                let all = d.read_all()?;
                (
                    all.len(),
                    all.iter().map(|t| t.as_bytes().len() as u64).sum(),
                )
            }
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                let model = d.to_cuda(rank, &tensorizer::cuda::CudaOptions::default())?;
                // As on the host: the bytes placed, meta tensors' zeros included.
                (
                    model.tensors().len(),
                    model.tensors().iter().map(|t| t.len as u64).sum(),
                )
            }
        };
        let load = RankLoad {
            rank,
            uri: config.uri_for_rank(rank)?,
            tensors,
            bytes,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_rank(&load);
        loads.push(load);
    }
    Ok(loads)
}
