//! The byte layout of a file about to be written, handed to a sink before
//! the first write. Files need only its length (to preallocate, or to size
//! multipart parts); key-value stores need its segments, because the Python
//! library names Redis keys after tensors.

/// What a run of bytes of a tensorizer file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// Magic, file header, `metadata_len` and the index.
    Prologue,
    /// The per-tensor header of the tensor with this serialized name.
    TensorHeader(String),
    /// The data of the tensor with this serialized name.
    TensorData(String),
    /// The trailing 8 zero bytes.
    Terminator,
}

/// One contiguous run of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the bytes are.
    pub kind: SegmentKind,
}

impl Segment {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The whole file: its size and, when the writer knows them, its segments
/// in offset order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileLayout {
    /// Final size in bytes.
    pub len: u64,
    /// Segments in offset order, tiling `0..len` (empty if unknown).
    pub segments: Vec<Segment>,
}

impl FileLayout {
    /// A layout that knows only the size.
    pub fn with_len(len: u64) -> Self {
        Self {
            len,
            segments: Vec::new(),
        }
    }

    /// The segment holding byte `offset`.
    pub fn segment_at(&self, offset: u64) -> Option<(usize, &Segment)> {
        let i = self.segments.partition_point(|s| s.end() <= offset);
        self.segments
            .get(i)
            .filter(|s| s.offset <= offset)
            .map(|s| (i, s))
    }
}
