//! tuning/check.sh and tuning/apply.sh on a scratch copy of /proc/sys
//! (TUNING_ROOT), so the test machine's own settings are not touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tuning")
        .join(name)
}

const UNTUNED: &[(&str, &str)] = &[
    ("fs/nr_open", "1048576"),
    ("fs/file-max", "9223372036854775807"),
    ("net/core/somaxconn", "128"),
    ("net/ipv4/tcp_max_syn_backlog", "1024"),
    ("net/ipv4/ip_local_port_range", "32768\t60999"),
    ("net/ipv4/tcp_tw_reuse", "2"),
    ("net/core/netdev_max_backlog", "1000"),
    ("net/core/rmem_max", "212992"),
    ("net/core/wmem_max", "8388608"),
    ("net/ipv4/tcp_migrate_req", "0"),
    ("kernel/io_uring_disabled", "0"),
];

struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let root = std::env::temp_dir().join(format!("todo-tuning-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, value) in UNTUNED {
            let p = root.join("proc/sys").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{value}\n")).unwrap();
        }
        Scratch { root }
    }

    fn run(&self, name: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(script(name))
            .args(args)
            .env("TUNING_ROOT", &self.root)
            .env("TUNING_SYSCTL_CONF", self.root.join("sysctl.conf"))
            .env("TUNING_LIMITS_CONF", self.root.join("limits.conf"))
            // Within this machine's open-files limits.
            .env("TODO_CONNECTIONS", "1000")
            .output()
            .unwrap()
    }

    fn value(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("proc/sys").join(name))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn short_rows(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.contains(" SHORT "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn check_says_what_is_short_and_apply_fixes_it_once() {
    let s = Scratch::new("apply");
    let before = s.run("check.sh", &[]);
    let report = text(&before);
    assert_eq!(before.status.code(), Some(1), "{report}");
    let short = short_rows(&report);
    for name in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.core.netdev_max_backlog",
        "net.core.rmem_max",
        "net.ipv4.tcp_migrate_req",
    ] {
        assert!(
            short.contains(&name.to_string()),
            "{name} not reported: {report}"
        );
    }
    // Each row says why.
    assert!(report.contains("accept queue"), "{report}");

    // A dry run changes nothing.
    let dry = s.run("apply.sh", &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("would set net.core.somaxconn: 128 -> 4096"));
    assert_eq!(s.value("net/core/somaxconn"), "128");
    assert!(!s.root.join("sysctl.conf").exists());

    let applied = s.run("apply.sh", &[]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert_eq!(s.value("net/core/somaxconn"), "4096");
    assert_eq!(s.value("net/ipv4/ip_local_port_range"), "1024 65535");
    assert_eq!(s.value("net/ipv4/tcp_migrate_req"), "1");
    // Values above the recommendation are left alone.
    assert_eq!(s.value("net/core/wmem_max"), "8388608");
    let conf = std::fs::read_to_string(s.root.join("sysctl.conf")).unwrap();
    assert!(conf.contains("net.core.somaxconn = 4096"), "{conf}");

    let again = s.run("apply.sh", &[]);
    assert!(
        text(&again).contains("nothing to change"),
        "{}",
        text(&again)
    );

    let after = s.run("check.sh", &[]);
    let report = text(&after);
    let short = short_rows(&report);
    // Clean, unless this machine refuses io_uring (which apply cannot fix).
    assert!(
        short.is_empty() || short == ["io_uring"],
        "still short after apply: {report}"
    );
    if short.is_empty() {
        assert_eq!(after.status.code(), Some(0), "{report}");
    }
}

#[test]
fn a_low_open_files_limit_is_reported() {
    let s = Scratch::new("nofile");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n 512 && exec bash {}",
            script("check.sh").display()
        ))
        .env("TUNING_ROOT", &s.root)
        .env("TODO_CONNECTIONS", "1000")
        .output()
        .unwrap();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("open files (ulimit -Sn)") && l.contains("SHORT")),
        "{report}"
    );
}
