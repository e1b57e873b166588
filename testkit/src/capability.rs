//! What a test needs from the machine (io_uring, network namespaces, a
//! tmpfs it mounts, ...) and what it does when the machine lacks it: it
//! fails, unless `TODO_TEST_SKIP` names the capability.
//!
//! ```text
//! TODO_TEST_SKIP=io_uring,netns,tmpfs,fuzz   the capabilities a run may do without
//! TODO_CAPABILITY_LOG=FILE                   one line per check: "ran NAME TEST" or
//!                                            "skipped NAME TEST: WHY" (scripts/test.sh
//!                                            sets it and lists both at the end of the run)
//! ```
//!
//! A skip is therefore never silent: the run's summary lists it, and only a
//! variable that names it allows it. A test that cannot run for any other
//! reason panics with what is missing and how to opt out.

use std::io::Write;

/// The capabilities `TODO_TEST_SKIP` may name, and what each one is.
pub const KNOWN: [(&str, &str); 4] = [
    (
        "io_uring",
        "the io_uring driver (kernel.io_uring_disabled, seccomp)",
    ),
    (
        "netns",
        "network namespaces for test hosts (ip netns, root)",
    ),
    ("tmpfs", "a small tmpfs the full-disk test mounts (root)"),
    ("fuzz", "cargo fuzz on the nightly toolchain"),
];

/// Whether a skip list (comma- or space-separated) names `name`.
fn named_in(list: &str, name: &str) -> bool {
    list.split([',', ' ']).map(str::trim).any(|n| n == name)
}

/// What a test does about a capability.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The machine has it: use it.
    Run,
    /// Missing, and the skip list names it: skip what needs it.
    Skip(String),
    /// Missing and not named: the test fails with this message.
    Fail(String),
}

/// The rule itself, with the skip list given: no environment, no log.
fn verdict(name: &str, test: &str, probe: Result<(), String>, skip_list: &str) -> Verdict {
    assert!(
        KNOWN.iter().any(|(n, _)| *n == name),
        "capability {name:?} is not one of {:?}",
        KNOWN.map(|(n, _)| n)
    );
    match probe {
        Ok(()) => Verdict::Run,
        Err(why) if named_in(skip_list, name) => Verdict::Skip(why.replace('\n', " ")),
        Err(why) => Verdict::Fail(format!(
            "{test} needs {name} and this machine lacks it: {why}\n\
             (TODO_TEST_SKIP={name} skips what needs it; the run then lists the skip)"
        )),
    }
}

/// The verdict on `name` for the calling test, given the machine's answer
/// (`Err(why)` when it lacks the capability): `true` when the test may use
/// it, `false` when it is missing and `TODO_TEST_SKIP` names it (the part
/// that needs it is skipped, and the skip recorded). Panics when it is
/// missing and not opted out, so the test fails saying why.
pub fn available(name: &str, probe: Result<(), String>) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_string();
    let skip_list = std::env::var("TODO_TEST_SKIP").unwrap_or_default();
    match verdict(name, &test, probe, &skip_list) {
        Verdict::Run => {
            record(&format!("ran {name} {test}"));
            true
        }
        Verdict::Skip(why) => {
            record(&format!("skipped {name} {test}: {why}"));
            eprintln!("SKIPPED ({name}, named by TODO_TEST_SKIP): {test}: {why}");
            false
        }
        Verdict::Fail(message) => panic!("{message}"),
    }
}

/// One line in `TODO_CAPABILITY_LOG`, when set. Lines are short and the
/// file is opened for appending, so tests in parallel do not interleave.
fn record(line: &str) {
    let Some(path) = std::env::var_os("TODO_CAPABILITY_LOG") else {
        return;
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("TODO_CAPABILITY_LOG {path:?}: {e}"));
    file.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("TODO_CAPABILITY_LOG {path:?}: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_a_capability_only_by_its_whole_name() {
        assert!(named_in("io_uring,netns", "netns"));
        assert!(named_in("io_uring, tmpfs", "tmpfs"));
        assert!(named_in("fuzz", "fuzz"));
        assert!(!named_in("", "fuzz"));
        assert!(!named_in("io_uring_x", "io_uring"));
        assert!(!named_in("netns", "net"));
    }

    #[test]
    fn a_present_capability_runs_whatever_the_list_says() {
        assert_eq!(verdict("tmpfs", "t", Ok(()), ""), Verdict::Run);
        assert_eq!(verdict("tmpfs", "t", Ok(()), "tmpfs"), Verdict::Run);
    }

    #[test]
    fn a_missing_capability_is_skipped_only_where_the_list_names_it() {
        assert_eq!(
            verdict("netns", "t", Err("no ip\nat all".into()), "io_uring,netns"),
            Verdict::Skip("no ip at all".into())
        );
        let Verdict::Fail(message) = verdict("netns", "cluster", Err("no ip".into()), "io_uring")
        else {
            panic!("a capability the list does not name must fail the test");
        };
        assert!(message.contains("cluster needs netns and this machine lacks it: no ip"));
        assert!(message.contains("TODO_TEST_SKIP=netns"));
    }

    #[test]
    #[should_panic(expected = "is not one of")]
    fn an_unknown_capability_is_a_mistake_in_the_test() {
        verdict("gpu", "t", Ok(()), "");
    }

    /// scripts/lib.sh checks TODO_TEST_SKIP against its own copy of the
    /// names (the shell cannot ask this crate): the two lists agree.
    #[test]
    fn the_scripts_know_the_same_capabilities() {
        let lib = include_str!("../../scripts/lib.sh");
        let line = lib
            .lines()
            .find_map(|l| l.strip_prefix("TEST_SKIP_KNOWN="))
            .expect("TEST_SKIP_KNOWN= in scripts/lib.sh");
        let scripts: Vec<&str> = line.trim_matches('"').split_whitespace().collect();
        assert_eq!(scripts, KNOWN.map(|(n, _)| n));
    }
}
