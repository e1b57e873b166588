//! What caps how many connections this process can hold, said at start-up.
//!
//! Every connection is a file descriptor, so the open-files soft limit
//! (RLIMIT_NOFILE) is the first cap; it is raised to the hard limit at
//! start-up, as a server that is meant to hold many connections should. Past
//! it come the machine-wide `fs.file-max`, and for the accept queue
//! `net.core.somaxconn`. `tuning/check.sh` reports all of them.

use std::io;

use rlimit::{getrlimit, setrlimit, Resource};

/// File descriptors kept aside for listeners, the io ring, log files and
/// client connections to Redis, PostgreSQL and Kafka.
pub const RESERVED_FDS: u64 = 64;

/// The limits that cap connections, as read at start-up.
#[derive(Debug, Clone)]
pub struct OpenFiles {
    /// RLIMIT_NOFILE soft limit after raising it.
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// What the soft limit was before it was raised.
    pub nofile_before: u64,
    /// `fs.file-max`: open files machine-wide.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: the kernel's cap on each listener's accept queue.
    pub somaxconn: Option<u64>,
}

impl OpenFiles {
    /// Raise the open-files soft limit to the hard limit and read the rest.
    pub fn raise_and_read() -> io::Result<Self> {
        let (before, hard) = getrlimit(Resource::NOFILE)?;
        // An unlimited hard limit still stops at fs.nr_open.
        let target = match read_sysctl("fs/nr_open") {
            Some(nr_open) if hard == rlimit::INFINITY => nr_open,
            _ => hard,
        };
        let mut soft = before;
        if soft < target && setrlimit(Resource::NOFILE, target, hard).is_ok() {
            soft = target;
        }
        Ok(OpenFiles {
            nofile_soft: soft,
            nofile_hard: hard,
            nofile_before: before,
            file_max: read_sysctl("fs/file-max"),
            somaxconn: read_sysctl("net/core/somaxconn"),
        })
    }

    /// Most connections this process can hold, and the setting that says so.
    pub fn cap(&self) -> (u64, &'static str) {
        let by_nofile = self.nofile_soft.saturating_sub(RESERVED_FDS);
        match self.file_max {
            Some(max) if max.saturating_sub(RESERVED_FDS) < by_nofile => {
                (max.saturating_sub(RESERVED_FDS), "fs.file-max")
            }
            _ => (by_nofile, "the open-files limit (ulimit -n)"),
        }
    }

    /// One line for the start-up log.
    pub fn describe(&self, backlog: i32) -> String {
        let (cap, by) = self.cap();
        let mut line = format!(
            "connections capped at about {cap} by {by}: RLIMIT_NOFILE soft {} (was {}), hard {}",
            self.nofile_soft, self.nofile_before, self.nofile_hard
        );
        if let Some(max) = self.file_max {
            line.push_str(&format!(", fs.file-max {max}"));
        }
        if let Some(s) = self.somaxconn {
            if s < backlog as u64 {
                line.push_str(&format!(
                    "; accept queue {s} per listener (net.core.somaxconn caps the {backlog} asked for)"
                ));
            }
        }
        line.push_str("; see tuning/check.sh");
        line
    }
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_limit_is_named() {
        let l = OpenFiles {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nofile_before: 1024,
            file_max: Some(1_000_000),
            somaxconn: Some(128),
        };
        assert_eq!(
            l.cap(),
            (20_000 - RESERVED_FDS, "the open-files limit (ulimit -n)")
        );
        let line = l.describe(4096);
        assert!(line.contains("was 1024"), "{line}");
        assert!(line.contains("net.core.somaxconn caps the 4096"), "{line}");
        let tight = OpenFiles {
            file_max: Some(5_000),
            ..l
        };
        assert_eq!(tight.cap().1, "fs.file-max");
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let l = OpenFiles::raise_and_read().unwrap();
        assert!(l.nofile_soft == l.nofile_hard || l.nofile_hard == rlimit::INFINITY);
    }
}
