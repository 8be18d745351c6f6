//! Which rank reads which bytes when the processes of one group load one
//! model: every byte is read by exactly one rank, then the group
//! exchanges what each read (the Python package does that over
//! `torch.distributed`; a Rust collective could use the same plan).
//!
//! The plan is a pure function of what every rank already knows (the
//! headers, the selection, the world size), so every rank computes the
//! same plan without talking to the others:
//!
//! ```
//! use tensorizer::distributed::{Extent, partition};
//!
//! // Two tensors of one file: 96 MiB and 32 MiB, split over two ranks in
//! // 16 MiB requests.
//! let mib = 1 << 20;
//! let extents = [Extent::new(0, 0, 96 * mib), Extent::new(0, 96 * mib, 32 * mib)];
//! let plan = partition(&extents, 2, 16 * mib);
//! // Rank 0 reads the first 64 MiB, rank 1 the rest of the first
//! // tensor and the whole second one: 64 MiB each.
//! assert_eq!(plan[0].iter().map(|s| s.len).sum::<u64>(), 64 * mib);
//! assert_eq!(plan[1].iter().map(|s| s.len).sum::<u64>(), 64 * mib);
//! ```

/// A byte range the group must read: one tensor's data (or any range a
/// caller asks for) in one of the load's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Which file (an index into the caller's list of files).
    pub file: usize,
    /// Offset of its first byte in the file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// True when one rank must read it whole: what guards it covers all
    /// of it (a tensor's CRC-32 or SHA-256, its cipher chunks' MACs).
    pub whole: bool,
}

impl Extent {
    /// An extent that may be split between ranks.
    pub fn new(file: usize, offset: u64, len: u64) -> Self {
        Self {
            file,
            offset,
            len,
            whole: false,
        }
    }

    /// An extent one rank reads whole.
    pub fn whole(file: usize, offset: u64, len: u64) -> Self {
        Self {
            whole: true,
            ..Self::new(file, offset, len)
        }
    }
}

/// What one rank reads: part (or all) of one extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Which extent (an index into the planned extents).
    pub extent: usize,
    /// Offset of the span's first byte inside the extent.
    pub start: u64,
    /// Bytes.
    pub len: u64,
}

impl Span {
    /// Offset of the span's first byte in its file.
    pub fn file_offset(&self, extents: &[Extent]) -> u64 {
        extents[self.extent].offset + self.start
    }
}

/// Splits `extents` among `world_size` ranks; rank `r` reads `plan[r]`.
///
/// The extents are laid end to end in the order given and cut into
/// `world_size` consecutive runs, so each rank reads one stretch of the
/// load (few, large requests) and the exchange can proceed in extent
/// order. Cuts fall on multiples of `request_size` from the start of the
/// load (of an eighth of an equal share, when that is less), so each
/// rank's share differs from an equal share by less than one request; a cut that would fall inside a [`Extent::whole`] extent
/// moves to that extent's nearer end, so such an extent can unbalance the
/// plan by up to its own size. Every byte is in exactly one span; an empty
/// extent gets an empty span on the rank whose run it starts in, so every
/// extent has an owner. Spans of one rank are in extent order.
///
/// `world_size` 0 is treated as 1 and `request_size` 0 as 1 byte.
pub fn partition(extents: &[Extent], world_size: usize, request_size: u64) -> Vec<Vec<Span>> {
    let ranks = world_size.max(1);
    let total: u64 = extents.iter().map(|e| e.len).sum();
    // Cut on requests, but never on a unit over an eighth of a fair share:
    // a load of a few requests still spreads over every rank.
    let request = request_size.min(total / ranks as u64 / 8).max(1);
    // Where each extent starts in the load's byte stream.
    let mut starts = Vec::with_capacity(extents.len());
    let mut at = 0u64;
    for e in extents {
        starts.push(at);
        at += e.len;
    }
    // Ideal cuts, rounded to the nearest request boundary, then moved out
    // of whole extents; kept non-decreasing.
    let mut cuts = Vec::with_capacity(ranks + 1);
    cuts.push(0u64);
    for r in 1..ranks {
        let ideal = (u128::from(total) * r as u128 / ranks as u128) as u64;
        let mut cut = (ideal + request / 2) / request * request;
        cut = cut.min(total);
        // The extent containing the cut strictly inside it.
        let k = starts.partition_point(|&s| s <= cut).saturating_sub(1);
        if let Some(e) = extents.get(k) {
            let (s, end) = (starts[k], starts[k] + e.len);
            if e.whole && s < cut && cut < end {
                cut = if cut - s <= end - cut { s } else { end };
            }
        }
        let floor = *cuts.last().expect("one cut at least");
        cuts.push(cut.max(floor));
    }
    cuts.push(total);

    let mut plan = vec![Vec::new(); ranks];
    for (k, e) in extents.iter().enumerate() {
        let (s, end) = (starts[k], starts[k] + e.len);
        if e.len == 0 {
            // The rank whose run holds its position (the last at the end).
            let r = (0..ranks).find(|&r| s < cuts[r + 1]).unwrap_or(ranks - 1);
            plan[r].push(Span {
                extent: k,
                start: 0,
                len: 0,
            });
            continue;
        }
        for (r, spans) in plan.iter_mut().enumerate() {
            let (a, b) = (cuts[r].max(s), cuts[r + 1].min(end));
            if a < b {
                spans.push(Span {
                    extent: k,
                    start: a - s,
                    len: b - a,
                });
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn shares(plan: &[Vec<Span>]) -> Vec<u64> {
        plan.iter().map(|s| s.iter().map(|s| s.len).sum()).collect()
    }

    #[test]
    fn splits_evenly_on_request_boundaries() {
        let extents = [Extent::new(0, 8, 100 * MIB), Extent::new(1, 8, 28 * MIB)];
        let plan = partition(&extents, 4, 16 * MIB);
        assert_eq!(shares(&plan), [32 * MIB, 32 * MIB, 32 * MIB, 32 * MIB]);
        assert_eq!(
            plan[3],
            [
                Span {
                    extent: 0,
                    start: 96 * MIB,
                    len: 4 * MIB
                },
                Span {
                    extent: 1,
                    start: 0,
                    len: 28 * MIB
                }
            ]
        );
        assert_eq!(plan[3][0].file_offset(&extents), 8 + 96 * MIB);
    }

    #[test]
    fn small_loads_still_reach_every_rank() {
        // 4 MiB over 2 ranks in 16 MiB requests: cut on 256 KiB instead.
        let extents: Vec<Extent> = (0..8)
            .map(|i| Extent::whole(0, i * MIB / 2, MIB / 2))
            .collect();
        assert_eq!(
            shares(&partition(&extents, 2, 16 * MIB)),
            [2 * MIB, 2 * MIB]
        );
    }

    #[test]
    fn whole_extents_are_never_split() {
        let extents = [
            Extent::whole(0, 0, 10 * MIB),
            Extent::whole(0, 10 * MIB, 50 * MIB),
            Extent::whole(0, 60 * MIB, 4 * MIB),
        ];
        let plan = partition(&extents, 2, MIB);
        // The cut at 32 MiB falls inside the 50 MiB tensor, nearer its
        // start: the tensor goes whole to rank 1.
        assert_eq!(shares(&plan), [10 * MIB, 54 * MIB]);
        for spans in &plan {
            for s in spans {
                assert_eq!((s.start, s.len), (0, extents[s.extent].len));
            }
        }
    }

    #[test]
    fn more_ranks_than_bytes_and_empty_extents() {
        let extents = [
            Extent::new(0, 0, 0),
            Extent::new(0, 0, 3),
            Extent::new(0, 3, 0),
        ];
        let plan = partition(&extents, 8, 1);
        let owners: Vec<usize> = (0..3)
            .map(|k| {
                plan.iter()
                    .position(|s| s.iter().any(|s| s.extent == k))
                    .unwrap()
            })
            .collect();
        assert_eq!(shares(&plan).iter().sum::<u64>(), 3);
        assert_eq!(owners.len(), 3, "every extent has an owner");
        assert!(partition(&[], 4, MIB).iter().all(Vec::is_empty));
        assert_eq!(partition(&extents, 0, 0).len(), 1);
    }

    proptest! {
        #[test]
        fn every_byte_once_balanced_and_deterministic(
            lens in proptest::collection::vec((0u64..5_000, any::<bool>()), 0..40),
            ranks in 1usize..9,
            request in 1u64..700,
        ) {
            let extents: Vec<Extent> = lens
                .iter()
                .enumerate()
                .map(|(i, &(len, whole))| Extent { file: i % 3, offset: 10 * i as u64, len, whole })
                .collect();
            let plan = partition(&extents, ranks, request);
            prop_assert_eq!(&plan, &partition(&extents, ranks, request));
            prop_assert_eq!(plan.len(), ranks);
            // Coverage and disjointness: each extent's spans tile it.
            for (k, e) in extents.iter().enumerate() {
                let mut spans: Vec<Span> = plan.iter().flatten().filter(|s| s.extent == k).copied().collect();
                spans.sort_by_key(|s| s.start);
                prop_assert!(!spans.is_empty(), "extent {} has no owner", k);
                let mut at = 0;
                for s in &spans {
                    prop_assert_eq!(s.start, at);
                    at += s.len;
                }
                prop_assert_eq!(at, e.len);
                if e.whole {
                    prop_assert!(spans.iter().filter(|s| s.len > 0).count() <= 1);
                }
            }
            // Balance: without whole extents, within one request of an
            // equal share (rounding of the cut on each side).
            if extents.iter().all(|e| !e.whole) {
                let total: u64 = extents.iter().map(|e| e.len).sum();
                for share in shares(&plan) {
                    let fair = total / ranks as u64;
                    prop_assert!(share.abs_diff(fair) <= request + 1, "{} vs {}", share, fair);
                }
            }
            // One rank's spans come in extent order.
            for spans in &plan {
                prop_assert!(spans.windows(2).all(|w| (w[0].extent, w[0].start) < (w[1].extent, w[1].start)));
            }
        }
    }
}
