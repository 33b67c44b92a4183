//! `topic create|list|describe|delete|add-partitions|config`, human and JSON, and their errors.

mod common;

use common::{TestNode, row_of, rows};
use serde_json::json;

#[test]
fn create_list_describe_in_both_modes() {
    let n = TestNode::start();
    let created = n
        .ctl(&[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=3600000",
        ])
        .ok();
    assert_eq!(
        created.stdout,
        "created topic orders with 3 partitions, replication factor 1\n"
    );
    let j = n.json(&[
        "topic",
        "create",
        "audit",
        "-r",
        "1",
        "-c",
        "cleanup.policy=compact",
    ]);
    assert_eq!(
        j,
        json!({"name": "audit", "partitions": 1, "replication_factor": 1}),
        "broker default partitions"
    );

    // list: internal topics hidden unless asked for.
    let list = n.ctl(&["topic", "list"]).ok().stdout;
    assert_eq!(
        rows(&list),
        vec![
            vec!["NAME", "PARTITIONS", "REPLICATION"],
            vec!["audit", "1", "1"],
            vec!["orders", "3", "1"]
        ]
    );
    let j = n.json(&["topic", "list"]);
    assert_eq!(
        j,
        json!([
            {"name": "audit", "partitions": 1, "replication_factor": 1},
            {"name": "orders", "partitions": 3, "replication_factor": 1},
        ])
    );
    // With a group's offsets stored, __consumer_offsets surely exists: --internal shows it.
    n.ctl(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "orders",
        "--to-earliest",
    ])
    .ok();
    assert!(
        !n.ctl(&["topic", "list"])
            .ok()
            .stdout
            .contains("__consumer_offsets")
    );
    let all = n.json(&["topic", "list", "--internal"]);
    assert!(
        all.as_array()
            .expect("array")
            .iter()
            .any(|t| t["name"] == "__consumer_offsets"),
        "{all}"
    );

    // Records land somewhere: describe shows earliest/latest from ListOffsets.
    n.ctl_stdin(&["produce", "orders", "-p", "1"], b"a\nb\nc\n")
        .ok();
    let text = n.ctl(&["topic", "describe", "orders"]).ok().stdout;
    assert_eq!(
        row_of(&text, "PARTITION"),
        vec![
            "PARTITION",
            "LEADER",
            "REPLICAS",
            "ISR",
            "EARLIEST",
            "LATEST"
        ]
    );
    assert_eq!(row_of(&text, "0"), vec!["0", "1", "1", "1", "0", "0"]);
    assert_eq!(row_of(&text, "1"), vec!["1", "1", "1", "1", "0", "3"]);
    assert_eq!(
        row_of(&text, "retention.ms"),
        vec!["retention.ms", "3600000"]
    );
    assert!(
        !text.contains("segment.bytes"),
        "only configs set on the topic by default:\n{text}"
    );
    let head = row_of(&text, "orders");
    assert_eq!((head[2].as_str(), head[3].as_str()), ("3", "1"));
    assert_eq!(
        head[1].len(),
        22,
        "topic id in Kafka's base64 form: {head:?}"
    );

    let j = n.json(&["topic", "describe", "orders"]);
    assert_eq!(j["name"], "orders");
    assert_eq!(j["id"], head[1].as_str());
    assert_eq!(j["configs"], json!({"retention.ms": "3600000"}));
    let parts = j["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3);
    assert_eq!(
        parts[1],
        json!({"partition": 1, "leader": 1, "replicas": [1], "isr": [1], "earliest": 0, "latest": 3})
    );
    assert_eq!(parts[2]["latest"], 0);

    // --all-configs: every value, with its source in human form.
    let j = n.json(&["topic", "describe", "orders", "--all-configs"]);
    let configs = j["configs"].as_object().expect("configs");
    assert!(configs.len() > 5, "{configs:?}");
    assert_eq!(configs["retention.ms"], "3600000");
    assert!(configs.contains_key("segment.bytes"));
    let text = n
        .ctl(&["topic", "describe", "orders", "--all-configs"])
        .ok()
        .stdout;
    assert_eq!(
        row_of(&text, "retention.ms"),
        vec!["retention.ms", "3600000", "DYNAMIC_TOPIC_CONFIG"]
    );
    assert_eq!(row_of(&text, "CONFIG"), vec!["CONFIG", "VALUE", "SOURCE"]);
}

#[test]
fn delete_and_add_partitions_in_both_modes() {
    let n = TestNode::start();
    for t in ["a", "b", "c"] {
        n.ctl(&["topic", "create", t, "-p", "1"]).ok();
    }
    assert_eq!(
        n.ctl(&["topic", "add-partitions", "a", "--total", "4"])
            .ok()
            .stdout,
        "topic a now has 4 partitions\n"
    );
    assert_eq!(
        n.json(&["topic", "add-partitions", "b", "--total", "2"]),
        json!({"name": "b", "partitions": 2})
    );
    assert_eq!(
        n.json(&["topic", "describe", "a"])["partitions"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    n.ctl(&["topic", "add-partitions", "a", "--total", "2"])
        .fails(1, "(INVALID_PARTITIONS)");

    assert_eq!(
        n.ctl(&["topic", "delete", "a"]).ok().stdout,
        "deleted topic a\n"
    );
    assert_eq!(n.json(&["topic", "delete", "b"]), json!({"deleted": ["b"]}));
    // One missing topic among several: the rest is deleted, the failure reported, exit 1.
    let r = n
        .ctl(&["--json", "topic", "delete", "c", "nope"])
        .fails(1, "(UNKNOWN_TOPIC_OR_PARTITION)");
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    assert_eq!(r.json(), json!({"deleted": ["c"]}));
    assert_eq!(n.json(&["topic", "list"]), json!([]));
}

#[test]
fn config_shows_sets_and_deletes_in_both_modes() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "1"]).ok();
    let shown = n.ctl(&["topic", "config", "t"]).ok().stdout;
    assert!(shown.starts_with("no configs set on the topic"), "{shown}");
    assert_eq!(
        n.json(&["topic", "config", "t"]),
        json!({"name": "t", "configs": {}})
    );

    let text = n
        .ctl(&[
            "topic",
            "config",
            "t",
            "--set",
            "retention.ms=1000",
            "--set",
            "cleanup.policy=compact",
        ])
        .ok()
        .stdout;
    assert_eq!(
        rows(&text),
        vec![
            vec!["CONFIG", "VALUE"],
            vec!["cleanup.policy", "compact"],
            vec!["retention.ms", "1000"]
        ]
    );
    let j = n.json(&[
        "topic",
        "config",
        "t",
        "--delete",
        "cleanup.policy",
        "--set",
        "retention.ms=2000",
    ]);
    assert_eq!(j, json!({"name": "t", "configs": {"retention.ms": "2000"}}));
    // The change is visible to describe as well.
    assert_eq!(
        n.json(&["topic", "describe", "t"])["configs"],
        json!({"retention.ms": "2000"})
    );
    let all = n.json(&["topic", "config", "t", "--all-configs"]);
    assert_eq!(
        all["configs"]["cleanup.policy"], "delete",
        "back to the default"
    );
}

#[test]
fn errors_are_one_sentence_with_the_kafka_name() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "orders", "-p", "1"]).ok();
    let r = n
        .ctl(&["topic", "create", "orders"])
        .fails(1, "(TOPIC_ALREADY_EXISTS)");
    assert!(
        r.stderr.contains("orders") && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    n.ctl(&["--json", "topic", "create", "orders"])
        .fails(1, "(TOPIC_ALREADY_EXISTS)");

    for args in [
        &["topic", "describe", "nope"][..],
        &["topic", "config", "nope"],
        &["topic", "delete", "nope"],
        &["topic", "add-partitions", "nope", "--total", "3"],
        &["produce", "nope"],
        &["consume", "nope"],
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "nope",
            "--to-earliest",
        ],
    ] {
        let r = n.ctl(args).fails(1, "(UNKNOWN_TOPIC_OR_PARTITION)");
        assert!(
            r.stderr.contains("nope") && r.stderr.contains("does not exist"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let r = n.ctl(&["topic", "describe", "nope"]);
    assert_eq!(
        r.stderr,
        "topic nope does not exist (UNKNOWN_TOPIC_OR_PARTITION)\n"
    );

    // Bad config values, at create and at alter time.
    let r = n
        .ctl(&["topic", "create", "bad", "-c", "retention.ms=soon"])
        .fails(1, "(INVALID_CONFIG)");
    assert!(r.stderr.contains("retention.ms"), "{}", r.stderr);
    assert!(
        !n.ctl(&["topic", "list"]).ok().stdout.contains("bad"),
        "nothing created"
    );
    n.ctl(&["topic", "config", "orders", "--set", "retention.ms=soon"])
        .fails(1, "(INVALID_CONFIG)");
    n.ctl(&["topic", "config", "orders", "--set", "no.such.config=1"])
        .fails(1, "(INVALID_CONFIG)");
    assert_eq!(
        n.json(&["topic", "config", "orders"])["configs"],
        json!({}),
        "nothing changed"
    );

    // Usage errors are clap's: exit 2.
    let r = n.ctl(&["topic", "create", "x", "-c", "no-equals-sign"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = n.ctl(&["topic", "frobnicate"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}
