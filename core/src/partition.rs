//! The partitioner: Kafka's default murmur2, so that an outside Kafka producer keyed by campaign
//! lands every click on the same partition that our ingest picks.
//!
//! The key of a click is the campaign id in decimal ASCII (`"42"`). A salted sub-key of a hot
//! campaign appends `#salt` (`"42#3"`); salt 0 is the plain key, so a campaign that starts being
//! salted keeps its original partition for salt 0.

use crate::ids::{CampaignId, PartitionId, Salt};

/// Kafka's `Utils.murmur2`, bit for bit (seed 0x9747b28c, little-endian 4-byte blocks).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut hash: u32 = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes(block.try_into().expect("chunks_exact yields 4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate().rev() {
            hash ^= u32::from(*byte) << (8 * index);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// Kafka's `Utils.toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionId {
    assert!(partitions > 0, "a log has at least one partition");
    PartitionId((murmur2(key) as u32 & 0x7fff_ffff) % partitions)
}

/// Writes `value` in decimal at `out[at..]` and returns the position after it.
fn write_decimal(mut value: u64, out: &mut [u8; 32], at: usize) -> usize {
    let mut digits = [0u8; 20];
    let mut count = 0;
    loop {
        digits[count] = b'0' + (value % 10) as u8;
        count += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for index in 0..count {
        out[at + index] = digits[count - 1 - index];
    }
    at + count
}

/// Writes the log key of a campaign (and salt) into `out` without allocating, and returns it.
/// On the ingest hot path, so no `fmt` machinery.
pub fn campaign_key(campaign: CampaignId, salt: Salt, out: &mut [u8; 32]) -> &[u8] {
    let mut length = write_decimal(campaign.0, out, 0);
    if salt.0 != 0 {
        out[length] = b'#';
        length = write_decimal(u64::from(salt.0), out, length + 1);
    }
    &out[..length]
}

/// The partition that owns a campaign's (salted) key.
pub fn partition_for_campaign(campaign: CampaignId, salt: Salt, partitions: u32) -> PartitionId {
    let mut buffer = [0u8; 32];
    partition_for_key(campaign_key(campaign, salt, &mut buffer), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2` and librdkafka's `rdmurmur2.c`.
    #[test]
    fn matches_kafka_murmur2_vectors() {
        let vectors: [(&[u8], i32); 11] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
            (b"1", -1993445489),
            (b"12", 126087238),
            (b"123", -267702483),
            (b"1234", -1614185708),
            (b"12345", -1188365604),
        ];
        for (key, expected) in vectors {
            assert_eq!(murmur2(key), expected, "key {:?}", std::str::from_utf8(key));
        }
    }

    #[test]
    fn partition_is_to_positive_modulo() {
        // toPositive(-973932308) = 1173551340; % 7 = 1173551340 - 7 * 167650191 = 3.
        assert_eq!(partition_for_key(b"21", 7), PartitionId(3));
        assert_eq!(
            partition_for_campaign(CampaignId(21), Salt(0), 7),
            PartitionId(3)
        );
    }

    #[test]
    fn salted_keys_append_the_salt() {
        let mut buffer = [0u8; 32];
        assert_eq!(campaign_key(CampaignId(42), Salt(0), &mut buffer), b"42");
        assert_eq!(campaign_key(CampaignId(42), Salt(3), &mut buffer), b"42#3");
        assert_eq!(
            campaign_key(CampaignId(u64::MAX), Salt(u16::MAX), &mut buffer),
            b"18446744073709551615#65535"
        );
        assert_eq!(campaign_key(CampaignId(0), Salt(10), &mut buffer), b"0#10");
        for campaign in [1u64, 9, 10, 99, 100, 12345, 1 << 40] {
            let text = campaign.to_string();
            assert_eq!(
                campaign_key(CampaignId(campaign), Salt(0), &mut buffer),
                text.as_bytes()
            );
        }
    }
}
