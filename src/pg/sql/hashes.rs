//! Partition hash functions (`sink.seahash`, `sink.kafka_murmur2`, `sink.crc32`),
//! the same the engine uses, for `PARTITION BY` expressions and for checking
//! where a key lands.

use pgrx::prelude::*;

/// SeaHash of the bytes (pg_sink's default partitioner), for `PARTITION BY`.
#[pg_extern(immutable, parallel_safe, strict, name = "seahash")]
fn seahash_bytea(data: &[u8]) -> pgrx::AnyNumeric {
    pgrx::AnyNumeric::from(crate::engine::encoder::hash::seahash(data))
}

#[pg_extern(immutable, parallel_safe, strict, name = "seahash")]
fn seahash_text(data: &str) -> pgrx::AnyNumeric {
    seahash_bytea(data.as_bytes())
}

/// Kafka's murmur2, masked positive like the Java partitioner:
/// `kafka_murmur2(key) % partitions` is the Java client's partition.
#[pg_extern(immutable, parallel_safe, strict, name = "kafka_murmur2")]
fn kafka_murmur2_bytea(data: &[u8]) -> i64 {
    crate::engine::encoder::hash::kafka_murmur2(data) as i64
}

#[pg_extern(immutable, parallel_safe, strict, name = "kafka_murmur2")]
fn kafka_murmur2_text(data: &str) -> i64 {
    kafka_murmur2_bytea(data.as_bytes())
}

/// CRC-32 (IEEE) of the bytes.
#[pg_extern(immutable, parallel_safe, strict, name = "crc32")]
fn crc32_bytea(data: &[u8]) -> i64 {
    crate::engine::encoder::hash::crc32(data) as i64
}

#[pg_extern(immutable, parallel_safe, strict, name = "crc32")]
fn crc32_text(data: &str) -> i64 {
    crc32_bytea(data.as_bytes())
}
