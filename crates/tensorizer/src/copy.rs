//! Copying a file between storages byte for byte: push a model to S3 or
//! Redis, fetch one to local disk. Nothing is decrypted, so encrypted files
//! copy without their key.

use rayon::prelude::*;
use tensorizer_format::TERMINATOR;
use tensorizer_io::StorageOptions;

use crate::error::{Result, source_error};
use crate::serializer::layout;
use crate::{Deserializer, WriteSummary};

/// Bytes moved per request.
const PIECE: u64 = 16 << 20;

/// Copies the tensorizer file at `input` to `output` (paths or URIs), byte
/// for byte from the magic to the last tensor, plus the terminator. The
/// header and index are parsed (so the destination can name Redis keys and
/// a non-tensorizer input is refused), the tensor data is not checked: use
/// [`Deserializer::verify`] for that. `output` is replaced atomically.
///
/// ```no_run
/// use tensorizer::{StorageOptions, copy};
/// // Push a model into Redis, where the Python library's `redis://` reader finds it.
/// copy("model.tensors", "redis://127.0.0.1:6379/llama", &StorageOptions::default())?;
/// # Ok::<(), tensorizer::Error>(())
/// ```
pub fn copy(input: &str, output: &str, storage: &StorageOptions) -> Result<WriteSummary> {
    let reader = Deserializer::open_uri_with(input, storage)?;
    let layout = layout(reader.metadata());
    let sink =
        tensorizer_io::create_sink(output, storage).map_err(source_error("starting the write"))?;
    sink.reserve(&layout)
        .map_err(source_error("announcing the file layout"))?;
    let source = reader.source();
    let end = layout.len - TERMINATOR.len() as u64;
    // Pieces never straddle a segment, so every piece lands in one key.
    let pieces: Vec<(u64, u64)> = layout
        .segments
        .iter()
        .filter(|s| s.end() <= end)
        .flat_map(|s| {
            (s.offset..s.end())
                .step_by(PIECE as usize)
                .map(move |at| (at, PIECE.min(s.end() - at)))
        })
        .collect();
    pieces.par_iter().try_for_each(|&(offset, len)| {
        let bytes = source
            .read_range(offset, len)
            .map_err(source_error("reading"))?;
        sink.write_all_at(offset, &bytes)
            .map_err(source_error("writing"))
    })?;
    sink.write_all_at(end, &TERMINATOR)
        .map_err(source_error("writing the terminator"))?;
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
