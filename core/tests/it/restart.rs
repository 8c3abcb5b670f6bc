//! Restart equivalence: cut the input at a random barrier, restore a fresh aggregator from the
//! checkpoint chain written so far (full + deltas, through their encoded bytes), continue, and
//! demand the exact same update stream as the run that never stopped.

use adclick_core::operator::{BarrierOutput, PartitionAggregator, SeriesUpdate};
use adclick_core::snapshot::{
    CheckpointKind, PartitionCheckpoint, PartitionStats, decode_checkpoint,
};
use adclick_core::*;
use proptest::prelude::*;

use crate::inputs::{self, Call};

struct Run {
    updates: Vec<(u64, SeriesUpdate)>,
    stats: PartitionStats,
}

/// Drives the calls; at the `restart_at`-th barrier, drops the aggregator and restores it.
fn run(calls: &[Call], restart_at: Option<usize>) -> Run {
    let registry = inputs::registry();
    let config = inputs::config();
    let mut aggregator = PartitionAggregator::new(
        config,
        PartitionId(0),
        registry.get(FraudListVersion(0)).unwrap(),
    );
    let mut chain: Vec<Vec<u8>> = Vec::new();
    let mut updates = Vec::new();
    let mut barriers = 0;
    let mut epoch = 0;
    let mut barrier =
        |aggregator: &mut PartitionAggregator, chain: &mut Vec<Vec<u8>>, updates: &mut Vec<_>| {
            epoch += 1;
            let BarrierOutput {
                updates: emitted,
                checkpoint,
                checkpoint_bytes,
                ..
            } = aggregator.on_barrier(Epoch(epoch));
            if checkpoint.kind == CheckpointKind::Full {
                chain.clear();
            }
            chain.push(checkpoint_bytes);
            updates.extend(emitted.into_iter().map(|update| (epoch, update)));
            aggregator.on_commit(Epoch(epoch));
        };
    for call in calls {
        match call {
            Call::Click {
                offset,
                event,
                processing_ms,
            } => {
                let bytes = adclick_core::codec::encode(event, Salt(0));
                aggregator.on_batch([(Offset(*offset), bytes.as_slice())], *processing_ms);
            }
            Call::Idle { processing_ms } => {
                aggregator.on_idle(*processing_ms);
            }
            Call::Stage { version } => {
                aggregator.stage_fraud_list(registry.get(FraudListVersion(*version)).unwrap())
            }
            Call::Barrier => {
                barrier(&mut aggregator, &mut chain, &mut updates);
                if Some(barriers) == restart_at {
                    let decoded: Vec<PartitionCheckpoint> = chain
                        .iter()
                        .map(|bytes| decode_checkpoint(bytes).expect("own checkpoints decode"))
                        .collect();
                    let next_offset = aggregator.next_offset();
                    drop(aggregator);
                    aggregator =
                        PartitionAggregator::restore(config, PartitionId(0), &decoded, &registry)
                            .unwrap();
                    assert_eq!(aggregator.next_offset(), next_offset);
                }
                barriers += 1;
            }
        }
    }
    aggregator.on_watermark(u64::MAX);
    barrier(&mut aggregator, &mut chain, &mut updates);
    Run {
        updates,
        stats: aggregator.stats(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn restoring_a_checkpoint_gives_the_uninterrupted_output(
        steps in proptest::collection::vec(inputs::step(), 1..300),
        restart_at in 0usize..40,
    ) {
        let calls = inputs::resolve(&steps);
        let uninterrupted = run(&calls, None);
        let restarted = run(&calls, Some(restart_at));
        prop_assert_eq!(&restarted.updates, &uninterrupted.updates);
        prop_assert_eq!(restarted.stats, uninterrupted.stats);
    }
}

/// A checkpoint's window starts and dedup bucket numbers mean something only under the settings
/// that wrote them: restoring under other settings is refused, naming the setting.
#[test]
fn restoring_under_changed_settings_is_refused() {
    let registry = inputs::registry();
    let config = inputs::config();
    let mut aggregator = PartitionAggregator::new(
        config,
        PartitionId(0),
        registry.get(FraudListVersion(0)).unwrap(),
    );
    let output = aggregator.on_barrier(Epoch(1));
    let mut changed = config;
    changed.dedup.bucket_ms = 2_000;
    let error =
        PartitionAggregator::restore(changed, PartitionId(0), &[output.checkpoint], &registry)
            .err()
            .unwrap();
    assert_eq!(
        error.to_string(),
        "checkpoint at epoch 1 was written with dedup_bucket_ms = 1000, but the config says 2000; restore with the old setting or start the partition afresh"
    );
}
