//! The command log: for every command of a committed batch, one JSON line
//! on stdout, written once per batch (all its lines in one buffer, one
//! write), after the batch's COMMIT:
//!
//! ```text
//! {"time":"2026-01-31T12:00:00.123456Z","event":"command","command_id":1,"todo_id":2,
//!  "op":"update","user":"alice","result":"rejected","reason":"not_owner",
//!  "request_id":"...","traceparent":"00-...-01","partition":0,"offset":17,
//!  "received":"2026-01-31T12:00:00.101234Z"}
//! ```
//!
//! `time` is the commit's (RFC 3339, UTC, microseconds), `received` when
//! the worker took the command's record from the consumer; `result` is
//! `applied`, `rejected` (with `reason`) or `duplicate` (processed before,
//! skipped); `request_id` and `traceparent` are the ones the command's
//! envelope carries for it (a record of one bare command: the record's
//! `x-request-id` and `traceparent` headers), present when known, so a write can be followed from the server's access log to its
//! outcome. `TODO_WORKER_COMMAND_LOG=off` turns it off.
//!
//! While a batch is gathered, [`CommandLog::note`] keeps where each command
//! came from (its partition, offset and those two headers, copied into one
//! buffer of the batch), so nothing is allocated per message.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;
use std::time::SystemTime;

use rdkafka::message::Headers;
use todo_model::{Outcome, TodoCommand};

/// Where one command of the batch came from.
struct Origin {
    partition: i32,
    offset: i64,
    /// When the record was taken from the consumer.
    received: SystemTime,
    /// Ranges in [`CommandLog::values`].
    request_id: Option<Range<usize>>,
    traceparent: Option<Range<usize>>,
}

/// One line, in the order its fields are written.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: &'a str,
    event: &'static str,
    command_id: u64,
    todo_id: u64,
    op: &'static str,
    user: &'a str,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<Cow<'a, str>>,
    partition: i32,
    offset: i64,
    received: &'a str,
}

/// The command log of the consume loop: gathers a batch's origins, writes
/// its lines.
pub struct CommandLog {
    on: bool,
    /// Per command of the batch, in order.
    origins: Vec<Origin>,
    /// The batch's header values.
    values: Vec<u8>,
    /// The batch's lines.
    out: Vec<u8>,
    /// A failed write was said already (said once, not per batch).
    said_failure: bool,
}

impl CommandLog {
    pub fn new(on: bool) -> Self {
        CommandLog {
            on,
            origins: Vec::new(),
            values: Vec::new(),
            out: Vec::new(),
            said_failure: false,
        }
    }

    /// A new batch begins.
    pub fn clear(&mut self) {
        self.origins.clear();
        self.values.clear();
    }

    /// The batch's next command came from `partition` at `offset`, with
    /// these record headers.
    pub fn note<H: Headers>(
        &mut self,
        partition: i32,
        offset: i64,
        received: SystemTime,
        headers: Option<&H>,
    ) {
        if !self.on {
            return;
        }
        let mut origin = Origin {
            partition,
            offset,
            received,
            request_id: None,
            traceparent: None,
        };
        for header in headers.into_iter().flat_map(|h| h.iter()) {
            let slot = if header.key.eq_ignore_ascii_case("x-request-id") {
                &mut origin.request_id
            } else if header.key.eq_ignore_ascii_case("traceparent") {
                &mut origin.traceparent
            } else {
                continue;
            };
            if let (None, Some(value)) = (&slot, header.value) {
                let start = self.values.len();
                self.values.extend_from_slice(value);
                *slot = Some(start..self.values.len());
            }
        }
        self.origins.push(origin);
    }

    /// The batch's next command came from `partition` at `offset` inside an
    /// envelope, which carried its request id and traceparent.
    pub fn note_packed(
        &mut self,
        partition: i32,
        offset: i64,
        received: SystemTime,
        request_id: Option<&str>,
        traceparent: Option<&str>,
    ) {
        if !self.on {
            return;
        }
        let mut keep = |value: Option<&str>| {
            value.map(|v| {
                let start = self.values.len();
                self.values.extend_from_slice(v.as_bytes());
                start..self.values.len()
            })
        };
        let origin = Origin {
            partition,
            offset,
            received,
            request_id: keep(request_id),
            traceparent: keep(traceparent),
        };
        self.origins.push(origin);
    }

    /// Write the lines of the committed batch `cmds` (the commands noted, in
    /// order) with their `outcomes`, in one write to stdout. A failed write
    /// is said once and does not stop the worker: the log is for people,
    /// PostgreSQL holds the outcomes.
    pub fn write(&mut self, cmds: &[TodoCommand], outcomes: &[Option<Outcome>]) {
        if !self.on || cmds.is_empty() {
            return;
        }
        self.render(cmds, outcomes, SystemTime::now());
        let written = std::io::stdout().lock().write_all(&self.out);
        match written {
            Ok(()) => self.said_failure = false,
            Err(e) if !self.said_failure => {
                self.said_failure = true;
                eprintln!("todo-worker: command log: writing to stdout: {e}; lines are lost until it works again");
            }
            Err(_) => {}
        }
    }

    /// The batch's lines into `self.out`, stamped `now`.
    fn render(&mut self, cmds: &[TodoCommand], outcomes: &[Option<Outcome>], now: SystemTime) {
        self.out.clear();
        let time = humantime::format_rfc3339_micros(now).to_string();
        let text = |range: &Option<Range<usize>>| {
            range
                .clone()
                .map(|r| String::from_utf8_lossy(&self.values[r]))
        };
        // A record's commands share its time: formatted once.
        let mut received: Option<(SystemTime, String)> = None;
        for ((cmd, outcome), origin) in cmds.iter().zip(outcomes).zip(&self.origins) {
            if received
                .as_ref()
                .is_none_or(|(at, _)| *at != origin.received)
            {
                let text = humantime::format_rfc3339_micros(origin.received).to_string();
                received = Some((origin.received, text));
            }
            let (result, reason) = match outcome {
                Some(Outcome::Applied) => ("applied", None),
                Some(Outcome::Rejected(why)) => ("rejected", Some(why.as_str())),
                None => ("duplicate", None),
            };
            let line = Line {
                time: &time,
                event: "command",
                command_id: cmd.command_id,
                todo_id: cmd.todo_id,
                op: cmd.op.as_str(),
                user: &cmd.user,
                result,
                reason,
                request_id: text(&origin.request_id),
                traceparent: text(&origin.traceparent),
                partition: origin.partition,
                offset: origin.offset,
                received: received.as_ref().map_or("", |(_, text)| text),
            };
            // Serializing plain fields into a Vec cannot fail.
            let _ = sonic_rs::to_writer(&mut self.out, &line);
            self.out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use sonic_rs::JsonValueTrait;
    use todo_model::{Fields, Op, Rejection};

    fn cmd(id: u64, op: Op, user: &str) -> TodoCommand {
        TodoCommand {
            command_id: id,
            op,
            todo_id: id + 100,
            user: user.into(),
            fields: Fields::default(),
            issued_at: 0,
            name: None,
            password_hash: None,
            idempotency: None,
        }
    }

    #[test]
    fn one_line_per_command_with_its_origin_and_result() {
        let mut log = CommandLog::new(true);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "other",
                value: Some("x"),
            })
            .insert(Header {
                key: "X-Request-Id",
                value: Some("req \"7\""),
            })
            .insert(Header {
                key: "traceparent",
                value: Some(&b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..]),
            });
        let taken =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_769_860_800_100_007);
        log.note(3, 40, taken, Some(&headers));
        log.note::<OwnedHeaders>(1, 7, taken, None);
        log.note::<OwnedHeaders>(1, 8, SystemTime::UNIX_EPOCH, None);
        let cmds = [
            cmd(1, Op::Create, "alice"),
            cmd(2, Op::Delete, "bob\n"),
            cmd(3, Op::Update, "alice"),
        ];
        let outcomes = [
            Some(Outcome::Applied),
            Some(Outcome::Rejected(Rejection::NotOwner)),
            None,
        ];
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_769_860_800_123_456);
        log.render(&cmds, &outcomes, at);
        let text = String::from_utf8(log.out.clone()).unwrap();
        let lines: Vec<sonic_rs::Value> = text
            .lines()
            .map(|l| sonic_rs::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let first = &lines[0];
        assert_eq!(first["time"].as_str(), Some("2026-01-31T12:00:00.123456Z"));
        assert_eq!(first["event"].as_str(), Some("command"));
        assert_eq!(first["command_id"].as_u64(), Some(1));
        assert_eq!(first["todo_id"].as_u64(), Some(101));
        assert_eq!(first["op"].as_str(), Some("create"));
        assert_eq!(first["result"].as_str(), Some("applied"));
        assert!(first.get("reason").is_none());
        assert_eq!(first["request_id"].as_str(), Some("req \"7\""));
        assert_eq!(
            first["traceparent"].as_str(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            (first["partition"].as_i64(), first["offset"].as_i64()),
            (Some(3), Some(40))
        );
        assert_eq!(
            first["received"].as_str(),
            Some("2026-01-31T12:00:00.100007Z")
        );
        assert_eq!(
            lines[1]["received"].as_str(),
            Some("2026-01-31T12:00:00.100007Z")
        );
        assert_eq!(
            lines[2]["received"].as_str(),
            Some("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(lines[1]["user"].as_str(), Some("bob\n"));
        assert_eq!(lines[1]["result"].as_str(), Some("rejected"));
        assert_eq!(lines[1]["reason"].as_str(), Some("not_owner"));
        assert!(lines[1].get("request_id").is_none() && lines[1].get("traceparent").is_none());
        assert_eq!(lines[2]["result"].as_str(), Some("duplicate"));
        assert_eq!(lines[2]["offset"].as_i64(), Some(8));
    }

    #[test]
    fn off_notes_and_writes_nothing() {
        let mut log = CommandLog::new(false);
        log.note::<OwnedHeaders>(0, 1, SystemTime::now(), None);
        assert!(log.origins.is_empty());
        log.write(&[cmd(1, Op::Create, "a")], &[Some(Outcome::Applied)]);
        assert!(log.out.is_empty());
    }
}
