//! A Sluice node started in-process on port 0, and the built `sluicectl` run against it.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sluice_node::Node;
use sluice_node::config::BrokerConfig;

/// The `sluicectl` binary cargo built for these tests.
pub const SLUICECTL: &str = env!("CARGO_BIN_EXE_sluicectl");

/// A running node; stopped cleanly when dropped.
pub struct TestNode {
    runtime: tokio::runtime::Runtime,
    node: Option<Node>,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl TestNode {
    /// A node with settings that keep tests quick: groups rebalance at once, one offsets
    /// partition; `rack` is its broker.rack.
    pub fn start_with_rack(rack: Option<&str>) -> TestNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let overrides: BTreeMap<String, String> = [
            ("group.initial.rebalance.delay.ms", "0"),
            ("offsets.topic.num.partitions", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let data_dir = dir.path().to_path_buf();
        let rack = rack.map(str::to_string);
        let (node, addr) = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let config = BrokerConfig::new(1, &addr.to_string(), None, rack, data_dir, overrides)
                .expect("config");
            let node = Node::start_with_listener(config, listener)
                .await
                .expect("node starts");
            (node, addr)
        });
        TestNode {
            runtime,
            node: Some(node),
            _dir: dir,
            bootstrap: addr.to_string(),
        }
    }

    /// A node without a rack.
    pub fn start() -> TestNode {
        Self::start_with_rack(None)
    }

    /// `sluicectl --bootstrap <this node> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        run(&self.command(args), None)
    }

    /// Like [`TestNode::ctl`], with `stdin` as standard input.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        run(&self.command(args), Some(stdin))
    }

    /// The command, for tests that manage the process themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SLUICECTL);
        c.arg("--bootstrap").arg(&self.bootstrap).args(args);
        c.env_remove("SLUICE_BOOTSTRAP");
        c
    }

    /// `--json` output of a command that must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ctl(&all).ok().json()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let _ = self.runtime.block_on(node.stop());
        }
    }
}

/// A finished `sluicectl` run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
}

impl Run {
    /// Asserts exit code 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "sluicectl {} failed: {}{}",
            self.args,
            self.stderr,
            self.stdout
        );
        self
    }

    /// Asserts the exit code and that stderr holds exactly one line containing `needle`.
    pub fn fails(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "sluicectl {}: stdout {:?} stderr {:?}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "sluicectl {}: stderr {:?} lacks {needle:?}",
            self.args,
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one sentence: {:?}",
            self.stderr
        );
        self
    }

    /// Stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "sluicectl {}: stdout is not JSON ({e}): {:?}",
                self.args, self.stdout
            )
        })
    }

    /// Stdout lines, each parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))
            })
            .collect()
    }
}

/// Runs a command to completion, feeding `stdin`.
pub fn run(command: &Command, stdin: Option<&[u8]>) -> Run {
    let mut c = Command::new(command.get_program());
    c.args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("sluicectl starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("sluicectl runs");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        args: command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Table rows of human output: lines split on runs of spaces, header line included.
pub fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The row of `text` whose first cell is `first`.
pub fn row_of(text: &str, first: &str) -> Vec<String> {
    rows(text)
        .into_iter()
        .find(|r| r.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row starting with {first:?} in:\n{text}"))
}

/// Waits for a child's exit and output, at most `limit`; past it the child is killed and the
/// test fails instead of hanging.
pub fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("child output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("sluicectl (pid {pid}) still running after {limit:?}");
        }
    }
}
