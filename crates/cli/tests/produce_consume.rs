//! `produce` then `consume`: keys and Kafka's partitioner, batching and round-robin, formats,
//! JSON lines, and when consume stops.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::{TestNode, wait_bounded};
use serde_json::json;

fn keyed_lines(n: usize) -> String {
    (0..n).map(|i| format!("key-{i}:value {i}\n")).collect()
}

/// key -> partition, from `%k %p` lines.
fn partitions_by_key(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(|l| {
            let (k, p) = l.split_once(' ').expect("two fields");
            (k.to_string(), p.to_string())
        })
        .collect()
}

#[test]
fn keyed_round_trip_spreads_keys_by_partitioner() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "ours", "-p", "4"]).ok();
    n.ctl(&["topic", "create", "theirs", "-p", "4"]).ok();
    let input = keyed_lines(40);
    let r = n
        .ctl_stdin(&["produce", "ours", "-k", ":"], input.as_bytes())
        .ok();
    assert_eq!(
        r.stderr,
        "produced 40 records to 4 partitions of topic ours\n"
    );
    assert!(r.stdout.is_empty(), "the summary goes to stderr");

    // Every record comes back with its key and value.
    let out = n
        .ctl(&[
            "consume",
            "ours",
            "--from-beginning",
            "--format",
            "%k=%v\\n",
        ])
        .ok()
        .stdout;
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..40).map(|i| format!("key-{i}=value {i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);

    // Kafka's default partitioner (murmur2 of the key) is unit-tested against Kafka's own
    // vectors; proto-tests/test_sluicectl.py checks the placement against librdkafka's.
    let ours = partitions_by_key(
        &n.ctl(&[
            "consume",
            "ours",
            "--from-beginning",
            "--format",
            "%k %p\\n",
        ])
        .ok()
        .stdout,
    );
    assert_eq!(ours.len(), 40);
    let used: std::collections::BTreeSet<&String> = ours.values().collect();
    assert_eq!(used.len(), 4, "40 keys spread over all 4 partitions");
}

#[test]
fn json_output_of_produce_and_consume() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "2"]).ok();
    let j = n
        .ctl_stdin(
            &["--json", "produce", "t", "-p", "1", "-k", "\\t"],
            b"k1\tv1\nno key here\n\t\n",
        )
        .ok()
        .json();
    assert_eq!(
        j,
        json!({"topic": "t", "records": 3, "partitions": [{"partition": 1, "records": 3}]})
    );

    let lines = n
        .ctl(&["--json", "consume", "t", "--from-beginning"])
        .ok()
        .json_lines();
    assert_eq!(lines.len(), 3);
    let ts = lines[0]["timestamp"].as_i64().expect("timestamp");
    assert!(ts > 1_600_000_000_000, "a real create time: {ts}");
    assert_eq!(
        lines[0],
        json!({"topic": "t", "partition": 1, "offset": 0, "timestamp": ts, "key": "k1", "value": "v1"})
    );
    assert_eq!(
        (lines[1]["key"].clone(), lines[1]["value"].clone()),
        (json!(null), json!("no key here"))
    );
    assert_eq!(
        (
            lines[2]["key"].clone(),
            lines[2]["value"].clone(),
            lines[2]["offset"].clone()
        ),
        (json!(""), json!(""), json!(2))
    );
}

#[test]
fn unkeyed_lines_go_round_robin_per_batch_of_1000() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "rr", "-p", "3"]).ok();
    let input: String = (0..2500).map(|i| format!("line {i}\n")).collect();
    let r = n
        .ctl_stdin(&["--json", "produce", "rr"], input.as_bytes())
        .ok();
    assert_eq!(
        r.json()["partitions"],
        json!([{"partition": 0, "records": 1000}, {"partition": 1, "records": 1000}, {"partition": 2, "records": 500}])
    );
    let d = n.json(&["topic", "describe", "rr"]);
    let latest: Vec<i64> = d["partitions"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p["latest"].as_i64().expect("n"))
        .collect();
    assert_eq!(latest, vec![1000, 1000, 500]);
    // Order within a partition is production order.
    let out = n
        .ctl(&["consume", "rr", "--from-beginning", "--partition", "2"])
        .ok()
        .stdout;
    let want: String = (2000..2500).map(|i| format!("line {i}\n")).collect();
    assert_eq!(out, want);
}

#[test]
fn formats_counts_partitions_and_where_consume_starts_and_stops() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "f", "-p", "2"]).ok();
    n.ctl_stdin(&["produce", "f", "-p", "0", "-k", "="], b"a=1\nb=22\n")
        .ok();
    n.ctl_stdin(&["produce", "f", "-p", "1"], b"x\n").ok();

    let out = n
        .ctl(&[
            "consume",
            "f",
            "--from-beginning",
            "--partition",
            "0",
            "--format",
            "%t/%p/%o [%k|%v] %K %S %h|%%\\n",
        ])
        .ok()
        .stdout;
    assert_eq!(out, "f/0/0 [a|1] 1 1 |%\nf/0/1 [b|22] 1 2 |%\n");
    let stamps = n
        .ctl(&[
            "consume",
            "f",
            "--from-beginning",
            "--partition",
            "1",
            "--format",
            "%T",
        ])
        .ok()
        .stdout;
    assert!(stamps.parse::<i64>().expect("a number") > 1_600_000_000_000);

    // -n stops after COUNT records.
    let out = n
        .ctl(&[
            "consume",
            "f",
            "--from-beginning",
            "-n",
            "2",
            "--format",
            "%p:%o\\n",
        ])
        .ok()
        .stdout;
    assert_eq!(out.lines().count(), 2);
    // Without --from-beginning consume starts at the end, and without -n/--follow stops there.
    assert_eq!(n.ctl(&["consume", "f"]).ok().stdout, "");
    n.ctl(&["consume", "f", "--partition", "5"])
        .fails(1, "(UNKNOWN_TOPIC_OR_PARTITION)");
}

#[test]
fn count_waits_for_records_produced_after_it_started() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "later", "-p", "2"]).ok();
    // From the beginning of an empty topic, so no record can slip past before it starts.
    let child = n
        .command(&[
            "consume",
            "later",
            "--from-beginning",
            "-n",
            "3",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("consume starts");
    n.ctl_stdin(&["produce", "later", "-k", ":"], b"a:1\nb:2\nc:3\n")
        .ok();
    let out = wait_bounded(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    values.sort_unstable();
    assert_eq!(values, vec!["1", "2", "3"]);
}
