//! Which `__consumer_offsets` partition a group lives in, computed exactly as Kafka does so that
//! a group lands on the same partition it would in an Apache Kafka cluster.

/// Java's `String.hashCode`: `s[0]*31^(n-1) + ... + s[n-1]` over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Kafka's `Utils.abs`: like `Math.abs` but maps `i32::MIN` (which has no positive twin) to 0.
pub fn kafka_abs(n: i32) -> i32 {
    if n == i32::MIN { 0 } else { n.abs() }
}

/// The `__consumer_offsets` partition of `group_id`: `Utils.abs(groupId.hashCode) % partitions`.
/// A non-positive partition count is treated as one partition rather than dividing by zero.
pub fn partition_for(group_id: &str, num_partitions: i32) -> i32 {
    kafka_abs(java_string_hash(group_id)) % num_partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_java_hash_codes() {
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        // "hello".hashCode() in Java.
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // U+1F600 is two UTF-16 code units, 0xD83D and 0xDE00: 0xD83D * 31 + 0xDE00.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        // A well-known Java string whose hashCode is Integer.MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
    }

    #[test]
    fn placement_follows_kafka_utils_abs() {
        // Utils.abs(Integer.MIN_VALUE) is 0, so this group goes to partition 0 for any count.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        // A negative hash (values computed independently, with Java's arithmetic).
        assert_eq!(
            java_string_hash("consumer-group-with-a-long-name"),
            -1_157_546_098
        );
        assert_eq!(partition_for("consumer-group-with-a-long-name", 50), 48);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("anything", 0), 0);
    }
}
