//! The client layer's error type, its exit codes, and Kafka error names as operators know them.

use std::time::Duration;

use sluice_protocol::kafka_protocol::ResponseError;
use thiserror::Error;

/// Everything that can stop a `sluicectl` command. Each variant prints as one plain sentence.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The broker answered with a Kafka error code.
    #[error("{message} ({})", error_name(*code))]
    Kafka {
        /// The Kafka error code.
        code: i16,
        /// The broker's error message when it sent one, else a sentence saying what failed.
        message: String,
    },
    /// No broker could be reached, or a connection broke.
    #[error("{0}")]
    Connection(String),
    /// A network wait outlasted `--timeout`.
    #[error("{0}")]
    Timeout(String),
    /// The broker's answer could not be understood, or it lacks an API this command needs.
    #[error("{0}")]
    Protocol(String),
    /// The command cannot be carried out as asked (no committed offset to shift, ...).
    #[error("{0}")]
    Invalid(String),
    /// Reading input or writing output failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Shorthand for results of the client layer.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// A Kafka error: the broker's own message when it gave one, else `fallback`.
    pub fn kafka(
        code: i16,
        broker_message: Option<&str>,
        fallback: impl FnOnce() -> String,
    ) -> Self {
        let message = match broker_message.map(str::trim) {
            Some(m) if !m.is_empty() => m.trim_end_matches('.').to_string(),
            _ => fallback(),
        };
        ClientError::Kafka { code, message }
    }

    /// A wait that outlasted `timeout`.
    pub fn timeout(what: impl std::fmt::Display, timeout: Duration) -> Self {
        ClientError::Timeout(format!("{what} within {}", seconds(timeout)))
    }

    /// The process exit code: 1 for Kafka and other command errors, 3 for connection problems
    /// and timeouts (2, usage errors, is clap's own).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connection(_) | ClientError::Timeout(_) => 3,
            _ => 1,
        }
    }

    /// The Kafka error code, if the broker sent one.
    pub fn kafka_code(&self) -> Option<i16> {
        match self {
            ClientError::Kafka { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when stdout was closed under us (`sluicectl consume | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `10s`, `2.5s`: a duration as an operator typed it.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{s}s")
    }
}

/// Kafka's own name for an error code, e.g. `TOPIC_ALREADY_EXISTS`.
///
/// The kafka-protocol crate names its variants in CamelCase; operators, logs and Kafka's
/// documentation use the SCREAMING_SNAKE names of `org.apache.kafka.common.protocol.Errors`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => screaming_snake(&format!("{e:?}")),
    }
}

fn screaming_snake(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // A new word starts after a lowercase letter or digit, or at the last capital of an
            // acronym followed by a lowercase letter.
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_get_kafkas_screaming_snake_names() {
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(40), "INVALID_CONFIG");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(79), "MEMBER_ID_REQUIRED");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn a_kafka_error_prefers_the_brokers_message() {
        let e = ClientError::kafka(36, Some("topic 'orders' already exists."), || {
            "unused".into()
        });
        assert_eq!(
            e.to_string(),
            "topic 'orders' already exists (TOPIC_ALREADY_EXISTS)"
        );
        let e = ClientError::kafka(36, Some(""), || "topic orders already exists".into());
        assert_eq!(
            e.to_string(),
            "topic orders already exists (TOPIC_ALREADY_EXISTS)"
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(ClientError::Timeout("x".into()).exit_code(), 3);
    }
}
