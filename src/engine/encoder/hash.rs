//! Stable partition hashes of encoded keys: SeaHash (pg_sink's default, as
//! Materialize's), Kafka's murmur2 (equal to the Java client's default partitioner)
//! and CRC-32. Exposed to SQL for `PARTITION BY` expressions.

/// SeaHash of the bytes.
pub fn seahash(bytes: &[u8]) -> u64 {
    seahash::hash(bytes)
}

/// Kafka's murmur2 with its seed, masked positive as the Java partitioner does:
/// `partition = kafka_murmur2(key) % partitions` matches a Java producer.
pub fn kafka_murmur2(bytes: &[u8]) -> u32 {
    (murmur2(bytes) as u32) & 0x7fff_ffff
}

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// CRC-32 (IEEE) of the bytes.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The partition of a record: `hash(key) % partitions`, keyless records to 0.
pub fn default_partition(key: Option<&[u8]>, partitions: i32) -> i32 {
    match key {
        Some(k) if partitions > 0 => (seahash(k) % partitions as u64) as i32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest.testMurmur2 reference values.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            (b"abc", 479470107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), *want, "{}", String::from_utf8_lossy(data));
        }
        assert_eq!(kafka_murmur2(b"21"), (-973932308i32 as u32) & 0x7fff_ffff);
    }

    #[test]
    fn crc32_and_seahash_reference_values() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(seahash(b"to be or not to be"), 1988685042348123509);
        assert_eq!(default_partition(None, 8), 0);
        assert_eq!(default_partition(Some(b"k"), 8), (seahash(b"k") % 8) as i32);
    }
}
