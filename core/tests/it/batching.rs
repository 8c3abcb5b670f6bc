//! Batch equivalence: `on_batch` decodes and prefetches records ahead of counting them, so a
//! batch of thousands must count exactly as the same records one call at a time, undecodable
//! records in the middle included. The batched run also hands every barrier's buffers back
//! (`recycle`), which must not change a byte of any later checkpoint.

use adclick_core::operator::RecordProblem;
use adclick_core::operator::{BarrierOutput, PartitionAggregator, SeriesUpdate};
use adclick_core::snapshot::PartitionStats;
use adclick_core::*;
use proptest::prelude::*;

use crate::inputs::{self, Call};

/// What one run emitted: the updates and checkpoint bytes of every barrier, the undecodable
/// offsets, the stats.
type Output = (
    Vec<(u64, SeriesUpdate)>,
    Vec<Vec<u8>>,
    Vec<(Offset, RecordProblem)>,
    PartitionStats,
);

/// Records of one batch: clicks as the log holds them, and every `garbage_every`-th one followed
/// by an undecodable record with an offset of its own.
fn records(clicks: &[(u64, ClickEvent)], garbage_every: usize) -> Vec<(Offset, Vec<u8>)> {
    let mut records = Vec::new();
    for (index, (offset, event)) in clicks.iter().enumerate() {
        records.push((Offset(2 * offset), codec::encode(event, Salt(0))));
        if index % garbage_every == garbage_every - 1 {
            records.push((Offset(2 * offset + 1), vec![99, 1, 2]));
        }
    }
    records
}

/// Drives the calls; consecutive clicks go to `on_batch` together, or one by one. Together,
/// every barrier's checkpoint and bytes are recycled.
fn run(calls: &[Call], together: bool, garbage_every: usize) -> Output {
    let registry = inputs::registry();
    let mut aggregator = PartitionAggregator::new(
        inputs::config(),
        PartitionId(0),
        registry.get(FraudListVersion(0)).unwrap(),
    );
    let mut updates = Vec::new();
    let mut checkpoints = Vec::new();
    let mut undecodable = Vec::new();
    let mut epoch = 0;
    let mut pending: Vec<(u64, ClickEvent)> = Vec::new();
    let mut pending_ms = 0;
    let flush = |aggregator: &mut PartitionAggregator,
                 pending: &mut Vec<(u64, ClickEvent)>,
                 processing_ms: u64,
                 undecodable: &mut Vec<(Offset, RecordProblem)>| {
        let records = records(pending, garbage_every);
        pending.clear();
        if together {
            undecodable.extend(
                aggregator.on_batch(
                    records
                        .iter()
                        .map(|(offset, bytes)| (*offset, bytes.as_slice())),
                    processing_ms,
                ),
            );
        } else {
            for (offset, bytes) in &records {
                undecodable
                    .extend(aggregator.on_batch([(*offset, bytes.as_slice())], processing_ms));
            }
        }
    };
    for call in calls.iter().chain([&Call::Barrier]) {
        if let Call::Click {
            offset,
            event,
            processing_ms,
        } = call
        {
            pending.push((*offset, event.clone()));
            pending_ms = *processing_ms;
            continue;
        }
        flush(&mut aggregator, &mut pending, pending_ms, &mut undecodable);
        match call {
            Call::Click { .. } => unreachable!("handled above"),
            Call::Idle { processing_ms } => {
                aggregator.on_idle(*processing_ms);
            }
            Call::Stage { version } => {
                aggregator.stage_fraud_list(registry.get(FraudListVersion(*version)).unwrap())
            }
            Call::Barrier => {
                epoch += 1;
                let BarrierOutput {
                    updates: emitted,
                    checkpoint,
                    checkpoint_bytes,
                    ..
                } = aggregator.on_barrier(Epoch(epoch));
                updates.extend(emitted.into_iter().map(|update| (epoch, update)));
                aggregator.on_commit(Epoch(epoch));
                checkpoints.push(checkpoint_bytes.clone());
                if together {
                    aggregator.recycle(checkpoint, checkpoint_bytes);
                }
            }
        }
    }
    (updates, checkpoints, undecodable, aggregator.stats())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_batch_counts_exactly_as_its_records_one_by_one(
        steps in proptest::collection::vec(inputs::step(), 1..400),
        garbage_every in 1usize..40,
    ) {
        let calls = inputs::resolve(&steps);
        let together = run(&calls, true, garbage_every);
        let one_by_one = run(&calls, false, garbage_every);
        prop_assert_eq!(together, one_by_one);
    }
}
