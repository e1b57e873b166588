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

/// Whether `TODO_TEST_SKIP` (comma- or space-separated) names `name`.
pub fn opted_out(name: &str) -> bool {
    named_in(&std::env::var("TODO_TEST_SKIP").unwrap_or_default(), name)
}

fn named_in(list: &str, name: &str) -> bool {
    list.split([',', ' ']).map(str::trim).any(|n| n == name)
}

/// The verdict on `name` for the calling test, given the machine's answer
/// (`Err(why)` when it lacks the capability): `true` when the test may use
/// it, `false` when it is missing and `TODO_TEST_SKIP` names it (the part
/// that needs it is skipped, and the skip recorded). Panics when it is
/// missing and not opted out, so the test fails saying why.
pub fn available(name: &str, probe: Result<(), String>) -> bool {
    assert!(
        KNOWN.iter().any(|(n, _)| *n == name),
        "capability {name:?} is not one of {:?}",
        KNOWN.map(|(n, _)| n)
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_string();
    match probe {
        Ok(()) => {
            record(&format!("ran {name} {test}"));
            true
        }
        Err(why) if opted_out(name) => {
            let why = why.replace('\n', " ");
            record(&format!("skipped {name} {test}: {why}"));
            eprintln!("SKIPPED ({name}, named by TODO_TEST_SKIP): {test}: {why}");
            false
        }
        Err(why) => panic!(
            "{test} needs {name} and this machine lacks it: {why}\n\
             (TODO_TEST_SKIP={name} skips what needs it; the run then lists the skip)"
        ),
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
    fn a_present_capability_is_available() {
        assert!(available("tmpfs", Ok(())));
    }

    #[test]
    #[should_panic(expected = "needs netns and this machine lacks it: no ip")]
    fn a_missing_capability_fails_the_test_unless_opted_out() {
        // This process's TODO_TEST_SKIP is whatever the run set; the test
        // holds only where it does not name netns.
        if opted_out("netns") {
            panic!("needs netns and this machine lacks it: no ip (opted out in this run)");
        }
        available("netns", Err("no ip".into()));
    }

    #[test]
    #[should_panic(expected = "is not one of")]
    fn an_unknown_capability_is_a_mistake_in_the_test() {
        available("gpu", Ok(()));
    }
}
