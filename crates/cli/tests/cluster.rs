//! `cluster info` in both modes, connection failures within `--timeout`, usage errors and shell
//! completion.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{SLUICECTL, TestNode, row_of, run};
use serde_json::json;

#[test]
fn cluster_info_in_both_modes() {
    let n = TestNode::start_with_rack(Some("rack-a"));
    n.ctl(&["topic", "create", "orders", "-p", "3"]).ok();
    let port: u16 = n
        .bootstrap
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let j = n.json(&["cluster", "info"]);
    assert_eq!(j["controller"], 1);
    assert_eq!(
        j["brokers"],
        json!([{"id": 1, "host": "127.0.0.1", "port": port, "rack": "rack-a"}])
    );
    // Every topic counts, internal ones included (the node creates __consumer_offsets itself).
    let all = n.json(&["topic", "list", "--internal"]);
    let all = all.as_array().expect("topics");
    let partitions: i64 = all
        .iter()
        .map(|t| t["partitions"].as_i64().expect("count"))
        .sum();
    assert!(partitions >= 3);
    assert_eq!(
        (j["topics"].clone(), j["partitions"].clone()),
        (json!(all.len()), json!(partitions))
    );
    assert_eq!(
        (j["under_replicated"].clone(), j["offline"].clone()),
        (json!(0), json!(0))
    );
    let cluster_id = j["cluster_id"].as_str().expect("cluster id").to_string();
    assert!(!cluster_id.is_empty());

    let text = n.ctl(&["cluster", "info"]).ok().stdout;
    let (topics, partitions) = (all.len().to_string(), partitions.to_string());
    assert_eq!(
        row_of(&text, &cluster_id),
        vec![cluster_id.as_str(), "1", &topics, &partitions, "0", "0"]
    );
    assert_eq!(
        row_of(&text, "1"),
        vec!["1", "127.0.0.1", &port.to_string(), "rack-a"]
    );
    assert_eq!(
        row_of(&text, "CLUSTER-ID"),
        vec![
            "CLUSTER-ID",
            "CONTROLLER",
            "TOPICS",
            "PARTITIONS",
            "UNDER-REPLICATED",
            "OFFLINE"
        ]
    );
}

#[test]
fn bootstrap_comes_from_the_environment_and_skips_dead_addresses() {
    let n = TestNode::start();
    let dead = closed_port();
    let mut c = Command::new(SLUICECTL);
    c.args(["--json", "cluster", "info"]).env(
        "SLUICE_BOOTSTRAP",
        format!("127.0.0.1:{dead},{}", n.bootstrap),
    );
    let r = run(&c, None).ok();
    assert_eq!(r.json()["controller"], 1);
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[test]
fn a_refused_connection_exits_3_with_a_sentence() {
    let port = closed_port();
    let mut c = Command::new(SLUICECTL);
    c.args([
        "--bootstrap",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "2",
        "topic",
        "list",
    ]);
    let started = Instant::now();
    let r = run(&c, None).fails(3, "cannot connect to 127.0.0.1");
    assert!(r.stderr.contains("connection refused"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_silent_broker_times_out_within_the_timeout() {
    // Accepts connections (the kernel completes the handshake) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let mut c = Command::new(SLUICECTL);
    c.args([
        "--bootstrap",
        &addr.to_string(),
        "--timeout",
        "2",
        "--json",
        "cluster",
        "info",
    ]);
    let started = Instant::now();
    let r = run(&c, None).fails(3, "did not answer ApiVersions within 2s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(r.stdout.is_empty());
}

#[test]
fn usage_errors_exit_2_and_help_documents_json() {
    for args in [
        &["frobnicate"][..],
        &["--timeout", "0", "cluster", "info"],
        &["group", "reset-offsets", "g", "--topic", "t"],
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "tuesday",
        ],
        &["consume", "t", "--format", "%z"],
    ] {
        let mut c = Command::new(SLUICECTL);
        c.args(args);
        let r = run(&c, None);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty());
    }
    let mut c = Command::new(SLUICECTL);
    c.arg("--help");
    let help = run(&c, None).ok().stdout;
    for needle in [
        "--json",
        "group describe",
        "{group, state, protocol_type",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}");
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _sluicectl"),
        ("zsh", "#compdef sluicectl"),
        ("fish", "complete -c sluicectl"),
    ] {
        let mut c = Command::new(SLUICECTL);
        c.args(["completion", shell]);
        let out = run(&c, None).ok().stdout;
        assert!(out.contains(marker), "{shell}: no {marker:?}");
        assert!(
            out.contains("reset-offsets"),
            "{shell} script lacks subcommands"
        );
    }
}
