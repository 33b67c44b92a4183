//! Consumer groups: `consume --group` as a real member (join, range assignment, commit, leave),
//! `group list|describe|delete|reset-offsets` in both modes, and reset refused while members
//! are active.
//!
//! Running members are synchronised on what they print (records on stdout, membership lines
//! of `-v` on stderr), never on sleeps.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{TestNode, row_of, rows};
use serde_json::{Value, json};

/// A `consume --group ... --follow -v` process and its output lines. Lines are read by
/// threads into channels so every wait for one is bounded: a missing line fails the test
/// instead of hanging it.
struct Member {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

/// Longest wait for a line a member should print (a rebalance waits for a heartbeat, 3 s).
const LINE_WAIT: Duration = Duration::from_secs(30);

fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Member {
    fn start(n: &TestNode, topic: &str, group: &str) -> Member {
        let mut child = n
            .command(&[
                "consume",
                topic,
                "--group",
                group,
                "--from-beginning",
                "--follow",
                "-v",
                "--format",
                "%p:%v\\n",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("consume starts");
        let stdout = lines_of(child.stdout.take().expect("stdout"));
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        Member {
            child,
            stdout,
            stderr,
        }
    }

    /// The next printed record, as (partition, value).
    fn record(&mut self) -> (i32, String) {
        let line = self
            .stdout
            .recv_timeout(LINE_WAIT)
            .expect("a record within 30 s");
        let (p, v) = line.split_once(':').expect("p:v");
        (p.parse().expect("partition"), v.to_string())
    }

    /// Waits for the next "joined group" line; returns (member id, generation, partitions).
    fn joined(&mut self) -> (String, i64, Vec<i32>) {
        let line = self
            .stderr
            .recv_timeout(LINE_WAIT)
            .expect("a membership line within 30 s");
        // joined group G as MEMBER (generation N): assigned partitions [a,b] of topic T
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..2], &["joined", "group"], "{line}");
        let generation = words[6].trim_end_matches("):").parse().expect("generation");
        let list = line
            .split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .expect("partition list");
        let partitions = list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|p| p.parse().expect("p"))
            .collect();
        (words[4].to_string(), generation, partitions)
    }

    /// Ctrl-C: the member commits what it printed, leaves the group and exits 0.
    fn interrupt(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        // Its stderr closes when it exits.
        let mut rest = Vec::new();
        loop {
            match self.stderr.recv_timeout(LINE_WAIT) {
                Ok(line) => rest.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("consumer still running 30 s after Ctrl-C")
                }
            }
        }
        let exit = self.child.wait().expect("consumer exits");
        assert!(exit.success(), "consumer exit {exit:?}, stderr {rest:?}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A failed assertion must not leave a --follow consumer running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn produce_to(n: &TestNode, topic: &str, partition: i32, values: &[&str]) {
    let input: String = values.iter().map(|v| format!("{v}\n")).collect();
    n.ctl_stdin(
        &["produce", topic, "-p", &partition.to_string()],
        input.as_bytes(),
    )
    .ok();
}

fn offsets(describe: &Value) -> Vec<(i64, Value, Value, Value)> {
    describe["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().expect("p"),
                o["committed"].clone(),
                o["end"].clone(),
                o["lag"].clone(),
            )
        })
        .collect()
}

#[test]
fn consume_with_a_group_commits_what_it_printed() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "3"]).ok();
    for p in 0..3 {
        let values: Vec<String> = (0..10).map(|i| format!("p{p}-{i}")).collect();
        produce_to(
            &n,
            "t",
            p,
            &values.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    // Ten records, then stop: committed offsets add up to what was printed.
    let first = n
        .ctl(&[
            "consume",
            "t",
            "--group",
            "g",
            "--from-beginning",
            "-n",
            "10",
        ])
        .ok()
        .stdout;
    assert_eq!(first.lines().count(), 10);
    let d = n.json(&["group", "describe", "g"]);
    assert_eq!(d["state"], "Empty", "the member left");
    assert_eq!(d["members"], json!([]));
    let committed: i64 = offsets(&d).iter().filter_map(|o| o.1.as_i64()).sum();
    assert_eq!(committed, 10);
    for (_, c, e, lag) in offsets(&d) {
        assert_eq!(e, json!(10));
        if let Some(c) = c.as_i64() {
            assert_eq!(lag, json!(10 - c));
        }
    }

    // The next run resumes at the committed offsets: together the two runs print all 30 once.
    let second = n
        .ctl(&["consume", "t", "--group", "g", "--from-beginning"])
        .ok()
        .stdout;
    let mut all: Vec<&str> = first.lines().chain(second.lines()).collect();
    all.sort_unstable();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..10).map(move |i| format!("p{p}-{i}")))
        .collect();
    want.sort_unstable();
    assert_eq!(all, want);

    let d = n.json(&["group", "describe", "g"]);
    assert_eq!(
        (
            d["group"].clone(),
            d["state"].clone(),
            d["protocol_type"].clone()
        ),
        (json!("g"), json!("Empty"), json!("consumer"))
    );
    assert_eq!(
        offsets(&d),
        (0..3)
            .map(|p| (p, json!(10), json!(10), json!(0)))
            .collect::<Vec<_>>()
    );
    let text = n.ctl(&["group", "describe", "g"]).ok().stdout;
    assert_eq!(row_of(&text, "g"), vec!["g", "Empty", "-", "0"]);
    assert!(text.contains("no active members"));
    assert_eq!(
        rows(&text)
            .into_iter()
            .filter(|r| r[0] == "t")
            .collect::<Vec<_>>(),
        (0..3)
            .map(|p| vec![
                "t".to_string(),
                p.to_string(),
                "10".into(),
                "10".into(),
                "0".into(),
                "-".into()
            ])
            .collect::<Vec<_>>()
    );

    assert_eq!(
        n.json(&["group", "list"]),
        json!([{"group": "g", "state": "Empty"}])
    );
    assert_eq!(
        rows(&n.ctl(&["group", "list"]).ok().stdout),
        vec![vec!["GROUP", "STATE"], vec!["g", "Empty"]]
    );
}

#[test]
fn two_members_split_partitions_by_range_and_reset_is_refused_while_active() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "4"]).ok();
    for p in 0..4 {
        produce_to(&n, "t", p, &[&format!("first-{p}")]);
    }
    let mut a = Member::start(&n, "t", "g");
    let (a_id, a_gen, a_parts) = a.joined();
    assert_eq!(
        a_parts,
        vec![0, 1, 2, 3],
        "alone, a member gets every partition"
    );
    let mut seen: Vec<(i32, String)> = (0..4).map(|_| a.record()).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..4)
            .map(|p| (p, format!("first-{p}")))
            .collect::<Vec<_>>()
    );

    // A second member: the group rebalances and the range assignor splits 4 partitions 2/2,
    // lower member id first.
    let mut b = Member::start(&n, "t", "g");
    let (b_id, b_gen, b_parts) = b.joined();
    let (a_id2, a_gen2, a_parts2) = a.joined();
    assert_eq!(a_id2, a_id, "a rejoins with its member id");
    assert!(
        b_gen > a_gen && a_gen2 == b_gen,
        "one new generation: {a_gen} -> {a_gen2}/{b_gen}"
    );
    let (low, high) = if a_id < b_id {
        (&a_parts2, &b_parts)
    } else {
        (&b_parts, &a_parts2)
    };
    assert_eq!((low.clone(), high.clone()), (vec![0, 1], vec![2, 3]));

    // New records reach the member that owns their partition, and no other.
    for p in 0..4 {
        produce_to(&n, "t", p, &[&format!("second-{p}")]);
    }
    for (m, parts) in [(&mut a, &a_parts2), (&mut b, &b_parts)] {
        let mut got: Vec<(i32, String)> = parts.iter().map(|_| m.record()).collect();
        got.sort();
        assert_eq!(
            got,
            parts
                .iter()
                .map(|p| (*p, format!("second-{p}")))
                .collect::<Vec<_>>()
        );
    }

    let d = n.json(&["group", "describe", "g"]);
    assert_eq!(
        (d["state"].clone(), d["protocol"].clone()),
        (json!("Stable"), json!("range"))
    );
    let members = d["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    for (id, parts) in [(&a_id, &a_parts2), (&b_id, &b_parts)] {
        let m = members
            .iter()
            .find(|m| m["member_id"] == id.as_str())
            .expect("member listed");
        assert_eq!(m["client_id"], "sluicectl");
        assert!(
            m["host"].as_str().expect("host").contains("127.0.0.1"),
            "{m}"
        );
        assert_eq!(
            m["assignment"],
            json!([{"topic": "t", "partitions": parts}])
        );
        for o in d["offsets"].as_array().expect("offsets") {
            if parts.contains(&(o["partition"].as_i64().expect("p") as i32)) {
                assert_eq!(o["member_id"], id.as_str());
                assert_eq!(o["end"], 2);
            }
        }
    }
    let text = n.ctl(&["group", "describe", "g"]).ok().stdout;
    assert_eq!(row_of(&text, "g"), vec!["g", "Stable", "range", "2"]);
    let a_row = row_of(&text, &a_id);
    assert_eq!(a_row[1], "sluicectl");
    assert_eq!(
        a_row[3],
        format!(
            "t:{}",
            a_parts2
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    );

    // Offsets of a group with members cannot be reset from outside.
    let r = n
        .ctl(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ])
        .fails(1, "(UNKNOWN_MEMBER_ID)");
    assert!(
        r.stderr.contains("group g has active members"),
        "{}",
        r.stderr
    );
    n.ctl(&["group", "delete", "g"])
        .fails(1, "(NON_EMPTY_GROUP)");
    // A dry run only plans.
    let plan = n.json(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to-earliest",
        "--dry-run",
    ]);
    assert_eq!(plan["dry_run"], true);

    // Ctrl-C: each commits what it printed and leaves.
    a.interrupt();
    b.interrupt();
    let d = n.json(&["group", "describe", "g"]);
    assert_eq!(d["state"], "Empty");
    assert_eq!(
        offsets(&d),
        (0..4)
            .map(|p| (p, json!(2), json!(2), json!(0)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn reset_offsets_plans_clamps_and_commits_in_both_modes() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "2"]).ok();
    produce_to(&n, "t", 0, &["a", "b", "c", "d", "e"]);
    produce_to(&n, "t", 1, &["x", "y", "z"]);

    let text = n
        .ctl(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-latest",
            "--dry-run",
        ])
        .ok()
        .stdout;
    assert_eq!(
        rows(&text),
        vec![
            vec!["TOPIC", "PARTITION", "CURRENT", "NEW"],
            vec!["t", "0", "-", "5"],
            vec!["t", "1", "-", "3"],
            vec!["dry", "run:", "nothing", "committed"],
        ]
    );
    n.ctl(&["group", "describe", "g"])
        .fails(1, "(GROUP_ID_NOT_FOUND)");

    let plan = |args: &[&str]| -> Vec<(Value, Value)> {
        let mut all = vec!["group", "reset-offsets", "g", "--topic", "t"];
        all.extend_from_slice(args);
        let j = n.json(&all);
        assert_eq!(
            (j["group"].clone(), j["topic"].clone(), j["dry_run"].clone()),
            (json!("g"), json!("t"), json!(false))
        );
        j["offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .map(|o| (o["current"].clone(), o["new"].clone()))
            .collect()
    };
    assert_eq!(
        plan(&["--to-latest"]),
        vec![(json!(null), json!(5)), (json!(null), json!(3))]
    );
    assert_eq!(
        plan(&["--shift-by", "-2"]),
        vec![(json!(5), json!(3)), (json!(3), json!(1))]
    );
    assert_eq!(
        plan(&["--shift-by", "-10"]),
        vec![(json!(3), json!(0)), (json!(1), json!(0))],
        "clamped to earliest"
    );
    assert_eq!(
        plan(&["--to-offset", "4"]),
        vec![(json!(0), json!(4)), (json!(0), json!(3))],
        "clamped to latest"
    );
    assert_eq!(
        plan(&["--to-datetime", "2000-01-01T00:00:00Z"]),
        vec![(json!(4), json!(0)), (json!(3), json!(0))]
    );
    assert_eq!(
        plan(&["--to-datetime", "2100-01-01"]),
        vec![(json!(0), json!(5)), (json!(0), json!(3))],
        "nothing that late"
    );
    let text = n
        .ctl(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ])
        .ok()
        .stdout;
    assert!(
        text.ends_with("committed the new offsets of group g\n"),
        "{text}"
    );
    assert_eq!(row_of(&text, "t"), vec!["t", "0", "5", "0"]);

    // What was committed is what consume --group resumes from.
    let d = n.json(&["group", "describe", "g"]);
    assert_eq!(
        offsets(&d),
        vec![
            (0, json!(0), json!(5), json!(5)),
            (1, json!(0), json!(3), json!(3))
        ]
    );
    let out = n.ctl(&["consume", "t", "--group", "g"]).ok().stdout;
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    assert_eq!(got, vec!["a", "b", "c", "d", "e", "x", "y", "z"]);

    // Shifting needs a committed offset to shift from.
    let r = n.ctl(&[
        "group",
        "reset-offsets",
        "fresh",
        "--topic",
        "t",
        "--shift-by",
        "1",
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("no committed offset"), "{}", r.stderr);
}

#[test]
fn delete_groups_in_both_modes_and_unknown_groups() {
    let n = TestNode::start();
    n.ctl(&["topic", "create", "t", "-p", "1"]).ok();
    for g in ["g1", "g2"] {
        n.ctl(&["group", "reset-offsets", g, "--topic", "t", "--to-earliest"])
            .ok();
    }
    assert_eq!(
        n.ctl(&["group", "delete", "g1"]).ok().stdout,
        "deleted group g1\n"
    );
    let r = n
        .ctl(&["--json", "group", "delete", "g2", "nope"])
        .fails(1, "(GROUP_ID_NOT_FOUND)");
    assert_eq!(r.json(), json!({"deleted": ["g2"]}));
    assert!(r.stderr.contains("nope"), "{}", r.stderr);
    assert_eq!(n.json(&["group", "list"]), json!([]));
    let r = n
        .ctl(&["group", "describe", "nope"])
        .fails(1, "(GROUP_ID_NOT_FOUND)");
    assert!(r.stderr.contains("nope"));
}
