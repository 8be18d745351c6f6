//! Copying a file between storages byte for byte: push a model to S3 or
//! Redis, fetch one to local disk. Nothing is decrypted, so encrypted files
//! copy without their key.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;
use tensorizer_format::TERMINATOR;
use tensorizer_io::{FileLayout, Segment, SegmentKind, StorageOptions};

use crate::error::{Result, source_error};
use crate::serializer::layout;
use crate::{Deserializer, FileFormat, Progress, ProgressFn, WriteSummary};

/// Bytes moved per request.
const PIECE: u64 = 16 << 20;

/// Copies the tensorizer or safetensors file at `input` to `output` (paths
/// or URIs), byte for byte: a tensorizer file from the magic to the last
/// tensor, plus the terminator; a safetensors file whole. The header and
/// index are parsed (so the destination can name Redis keys and anything
/// else is refused), the tensor data is not checked: use
/// [`Deserializer::verify`] for that. `output` is replaced atomically.
///
/// ```no_run
/// use tensorizer::{StorageOptions, copy};
/// // Push a model into Redis, where the Python library's `redis://` reader finds it.
/// copy("model.tensors", "redis://127.0.0.1:6379/llama", &StorageOptions::default())?;
/// # Ok::<(), tensorizer::Error>(())
/// ```
pub fn copy(input: &str, output: &str, storage: &StorageOptions) -> Result<WriteSummary> {
    copy_with_progress(input, output, storage, None)
}

/// [`copy`], calling `progress` after every piece moved (`tensors` counts
/// pieces of at most 16 MiB; `name` is the tensor the piece belongs to).
pub fn copy_with_progress(
    input: &str,
    output: &str,
    storage: &StorageOptions,
    progress: Option<ProgressFn>,
) -> Result<WriteSummary> {
    let reader = Deserializer::open_uri_with(input, storage)?;
    let source = reader.source();
    let tensorizer = matches!(reader.format(), FileFormat::Tensorizer);
    // A tensorizer file is laid out in segments (Redis names a key for
    // each); a safetensors file is one run of bytes, copied as it is.
    let layout = if tensorizer {
        layout(reader.metadata())
    } else {
        if output.to_ascii_lowercase().starts_with("redis://") {
            return Err(crate::Error::Source {
                action: "starting the write".into(),
                source: tensorizer_io::IoError::Unsupported {
                    uri: tensorizer_io::redact_uri(output),
                    message: "Redis holds tensorizer files (in the Python library's key layout), not safetensors files: convert first".into(),
                },
            });
        }
        FileLayout {
            len: source.len(),
            segments: vec![Segment {
                offset: 0,
                len: source.len(),
                kind: SegmentKind::Prologue,
            }],
        }
    };
    let sink =
        tensorizer_io::create_sink(output, storage).map_err(source_error("starting the write"))?;
    sink.reserve(&layout)
        .map_err(source_error("announcing the file layout"))?;
    let end = if tensorizer {
        layout.len - TERMINATOR.len() as u64
    } else {
        layout.len
    };
    // Pieces never straddle a segment, so every piece lands in one key.
    let pieces: Vec<(u64, u64, &str)> = layout
        .segments
        .iter()
        .filter(|s| s.end() <= end)
        .flat_map(|s| {
            let name = match &s.kind {
                SegmentKind::TensorHeader(n) | SegmentKind::TensorData(n) => n.as_str(),
                _ => "",
            };
            (s.offset..s.end())
                .step_by(PIECE as usize)
                .map(move |at| (at, PIECE.min(s.end() - at), name))
        })
        .collect();
    let total_bytes = end;
    let (moved, count) = (AtomicU64::new(0), AtomicUsize::new(0));
    pieces.par_iter().try_for_each(|&(offset, len, name)| {
        let bytes = source
            .read_range(offset, len)
            .map_err(source_error("reading"))?;
        sink.write_all_at(offset, &bytes)
            .map_err(source_error("writing"))?;
        if let Some(f) = &progress {
            f(&Progress {
                bytes: moved.fetch_add(len, Ordering::Relaxed) + len,
                total_bytes,
                tensors: count.fetch_add(1, Ordering::Relaxed) + 1,
                total_tensors: pieces.len(),
                name,
            });
        }
        Ok::<(), crate::Error>(())
    })?;
    if tensorizer {
        sink.write_all_at(end, &TERMINATOR)
            .map_err(source_error("writing the terminator"))?;
    }
    sink.commit()
        .map_err(source_error("committing the output"))?;
    let header = &reader.metadata().header;
    Ok(WriteSummary {
        path: output.into(),
        bytes: layout.len,
        tensor_bytes: header.tensor_size,
        tensors: reader.len(),
        version: header.version.get(),
    })
}
