//! Durability for the embedded default: a state file plus a command log.
//!
//! ```text
//! DATA_DIR/state.json      "TODO-STATE 1 <len> <crc32c>\n" + JSON: StoreImage and
//!                          the log generation G it covers up to
//! DATA_DIR/commands.G.log  "TODO-LOG 1\n", then one record per accepted command:
//!                          len u32 | crc32c(len) u32 | crc32c(payload) u32 | payload
//!                          (integers little-endian, payload the command's JSON)
//! ```
//!
//! A batch of commands is appended with one write and made durable with one
//! `fdatasync` before any of them is acknowledged (group commit), so a 202
//! survives `kill -9` and power loss; a failed append is cut off again, so
//! what follows never lands behind half a record. At start-up the state is
//! loaded, log G is replayed, and the result is written as state G+1
//! (temporary file, fsync, rename, directory fsync) before log G is removed;
//! a crash at any step leaves either the old state with its log or the new
//! state, never a gap or a double apply.
//!
//! Every record is checked. The length has a checksum of its own, so a
//! damaged length is told apart from a record cut short: only the last
//! record may be incomplete (a write cut short by a crash, so never
//! acknowledged), and it is cut off and logged; the same goes for zero bytes
//! to the end of the file (a file system may extend a file before its data
//! lands). Anything else that does not check stops start-up with an error
//! naming the file and the offset, and nothing is compacted or removed:
//! `todo-server data check` reports, `todo-server data repair` keeps the good
//! records and sets the damaged file aside. Files written before records had
//! checksums (JSON lines, a state file without its header) are still read,
//! with the same rule: only an unterminated last line may be torn.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use todo_model::TodoCommand;

use super::store::{Store, StoreImage};

const STATE_FILE: &str = "state.json";
const STATE_MAGIC: &str = "TODO-STATE 1";
const LOG_MAGIC: &[u8] = b"TODO-LOG 1\n";
/// Bytes before a record's payload: length, its checksum, the payload's.
const RECORD_HEAD: usize = 12;
/// Longest payload accepted: commands are a few KiB (bodies are capped at
/// 64 KiB by default); a longer length is damage.
const MAX_RECORD: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct StateFile {
    /// Commands in logs of generation < `generation` are included.
    generation: u64,
    #[serde(flatten)]
    image: StoreImage,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("state file {path} is not valid: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path} is damaged at byte {offset}: {reason}; nothing was changed. `todo-server data check` reports, `todo-server data repair` keeps the records before it and sets the file aside")]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("data directory {0} is in use by another todo-server (one process per data directory; a rolling restart needs the distributed path)")]
    InUse(PathBuf),
}

/// Hold an exclusive lock on `data_dir/lock` for as long as the returned
/// file is open: two processes appending to one command log would corrupt
/// it.
pub fn lock(data_dir: &Path) -> Result<std::fs::File, LogError> {
    std::fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
    let path = data_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    // flock(LOCK_EX | LOCK_NB) on Linux; released when the file closes,
    // also when the process is killed.
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::InUse(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_at(&path)(e)),
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open command log, appended to by the apply thread only.
pub struct CommandLog {
    file: File,
    path: PathBuf,
    /// Bytes known durable: a failed append is cut back to this.
    len: u64,
    buf: Vec<u8>,
}

/// Open `dir`: load or seed the state, replay and compact the log. Returns the
/// store and the log to append to, with how many commands were replayed.
/// Damage anywhere is an error before anything is written or removed.
pub fn open(
    dir: &Path,
    seed: impl FnOnce() -> StoreImage,
) -> Result<(Store, CommandLog, usize), LogError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let state_path = dir.join(STATE_FILE);
    let (generation, image) = match read_state(&state_path)? {
        Some(state) => (state.generation, state.image),
        None => (0, seed()),
    };
    let mut store = Store::from_image(image);

    let log_path = log_path_for(dir, generation);
    let replayed = replay(&log_path, &mut store)?;
    if replayed > 0 {
        // Replayed commands count as one more version, so a restarted server
        // never serves a version it served before with different bytes.
        store.next_snapshot();
    }
    let next = generation + 1;
    write_state(dir, next, &store)?;
    remove_logs_before(dir, next)?;
    let log = CommandLog::create(&log_path_for(dir, next))?;
    sync_dir(dir)?;
    Ok((store, log, replayed))
}

fn log_path_for(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("commands.{generation}.log"))
}

/// How a log's bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Right after the last good record.
    Clean,
    /// An incomplete last record, or zeros to the end, from `offset`: never
    /// acknowledged, cut off at start-up.
    Torn { offset: u64, bytes: u64 },
    /// The first byte that does not check.
    Damaged { offset: u64, reason: &'static str },
}

/// What a command log's bytes hold: the commands of its good records (with
/// each record's offset) and how it ends. Pure, so it is fuzzed alone.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<(u64, TodoCommand)>,
    /// Bytes up to the end of the last good record.
    pub good_len: u64,
    pub tail: Tail,
    /// Written before records had checksums (JSON lines).
    pub legacy: bool,
}

/// Read a command log's bytes (see the module doc for the format).
pub fn scan(bytes: &[u8]) -> Scan {
    if bytes.first() == Some(&b'{') {
        return scan_lines(bytes);
    }
    let mut records = Vec::new();
    let done = |records, good_len: usize, tail| Scan {
        records,
        good_len: good_len as u64,
        tail,
        legacy: false,
    };
    if !bytes.starts_with(LOG_MAGIC) {
        let tail = if LOG_MAGIC.starts_with(bytes) || bytes.iter().all(|&b| b == 0) {
            Tail::Torn {
                offset: 0,
                bytes: bytes.len() as u64,
            }
        } else {
            Tail::Damaged {
                offset: 0,
                reason: "not a command log (no TODO-LOG header)",
            }
        };
        let tail = if bytes.is_empty() { Tail::Clean } else { tail };
        return done(records, 0, tail);
    }
    let mut at = LOG_MAGIC.len();
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            return done(records, at, Tail::Clean);
        }
        let torn = Tail::Torn {
            offset: at as u64,
            bytes: rest.len() as u64,
        };
        // A record that does not check is damage, unless nothing but zeros
        // follows (a file system extended the file before its data landed).
        let damaged = |reason| {
            if rest.iter().all(|&b| b == 0) {
                torn
            } else {
                Tail::Damaged {
                    offset: at as u64,
                    reason,
                }
            }
        };
        if rest.len() < RECORD_HEAD {
            return done(records, at, torn);
        }
        let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&rest[..4]) != word(4) {
            return done(records, at, damaged("a record's length fails its checksum"));
        }
        let len = word(0) as usize;
        if len == 0 || len > MAX_RECORD {
            return done(records, at, damaged("a record's length is out of range"));
        }
        let Some(payload) = rest.get(RECORD_HEAD..RECORD_HEAD + len) else {
            return done(records, at, torn);
        };
        if crc32c::crc32c(payload) != word(8) {
            return done(records, at, damaged("a record fails its checksum"));
        }
        let Ok(cmd) = sonic_rs::from_slice::<TodoCommand>(payload) else {
            return done(records, at, damaged("a record does not hold a command"));
        };
        records.push((at as u64, cmd));
        at += RECORD_HEAD + len;
    }
}

/// A log of JSON lines, as written before records had checksums: only an
/// unterminated last line may be torn.
fn scan_lines(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let tail = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            break Tail::Torn {
                offset: at as u64,
                bytes: rest.len() as u64,
            };
        };
        match sonic_rs::from_slice::<TodoCommand>(&rest[..nl]) {
            Ok(cmd) => records.push((at as u64, cmd)),
            Err(_) if rest.iter().all(|&b| b == 0) => {
                break Tail::Torn {
                    offset: at as u64,
                    bytes: rest.len() as u64,
                }
            }
            Err(_) => {
                break Tail::Damaged {
                    offset: at as u64,
                    reason: "a line does not hold a command",
                }
            }
        }
        at += nl + 1;
    };
    Scan {
        records,
        good_len: at as u64,
        tail,
        legacy: true,
    }
}

/// Apply log `path` to `store`; how many commands it held. A damaged log
/// changes nothing.
fn replay(path: &Path, store: &mut Store) -> Result<usize, LogError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_at(path)(e)),
    };
    let scan = scan(&bytes);
    match scan.tail {
        Tail::Damaged { offset, reason } => {
            return Err(LogError::Damaged {
                path: path.to_path_buf(),
                offset,
                reason,
            })
        }
        Tail::Torn { offset, bytes } => eprintln!(
            "todo-server: {}: the last record, at byte {offset}, is incomplete ({bytes} bytes; a write cut short, never acknowledged): cut off",
            path.display()
        ),
        Tail::Clean => {}
    }
    for (_, cmd) in &scan.records {
        store.apply(cmd);
    }
    Ok(scan.records.len())
}

/// The state file, checked; `None` when there is none yet.
fn read_state(path: &Path) -> Result<Option<StateFile>, LogError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(path)(e)),
    };
    let corrupt = |message: String| LogError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let body = if bytes.first() == Some(&b'{') {
        // Written before the state file had a checksum.
        &bytes[..]
    } else {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let header =
            std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("header is not text".into()))?;
        let fields: Vec<&str> = header.rsplitn(3, ' ').collect();
        let (crc, len, magic) = match fields[..] {
            [crc, len, magic] => (crc.parse::<u32>().ok(), len.parse::<usize>().ok(), magic),
            _ => (None, None, ""),
        };
        let body = &bytes[nl + 1..];
        if magic != STATE_MAGIC || len != Some(body.len()) {
            return Err(corrupt(format!(
                "header {header:?} does not match its {} bytes",
                body.len()
            )));
        }
        if crc != Some(crc32c::crc32c(body)) {
            return Err(corrupt("its checksum does not match".into()));
        }
        body
    };
    sonic_rs::from_slice(body)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

fn write_state(dir: &Path, generation: u64, store: &Store) -> Result<(), LogError> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let state = StateFile {
        generation,
        image: store.image(),
    };
    let body = sonic_rs::to_vec(&state).map_err(|e| LogError::Corrupt {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    let header = format!("{STATE_MAGIC} {} {}\n", body.len(), crc32c::crc32c(&body));
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(header.as_bytes()).map_err(io_at(&tmp))?;
    f.write_all(&body).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    let path = dir.join(STATE_FILE);
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    sync_dir(dir)
}

/// Generations of the command logs in `dir`, ascending.
fn log_generations(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        if let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("commands."))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(g);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn remove_logs_before(dir: &Path, generation: u64) -> Result<(), LogError> {
    for g in log_generations(dir)? {
        if g < generation {
            let path = log_path_for(dir, g);
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

impl CommandLog {
    /// Open `path` for appending, writing the header into a new file.
    fn create(path: &Path) -> Result<CommandLog, LogError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_at(path))?;
        let mut len = file.metadata().map_err(io_at(path))?.len();
        if len == 0 {
            file.write_all(LOG_MAGIC).map_err(io_at(path))?;
            file.sync_data().map_err(io_at(path))?;
            len = LOG_MAGIC.len() as u64;
        }
        Ok(CommandLog {
            file,
            path: path.to_path_buf(),
            len,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Append `cmds` and make them durable (one write, one fdatasync). On
    /// failure nothing of them stays in the file.
    pub fn append(&mut self, cmds: &[&TodoCommand]) -> Result<(), LogError> {
        self.buf.clear();
        for cmd in cmds {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0; RECORD_HEAD]);
            sonic_rs::to_writer(&mut self.buf, cmd).map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            let payload = &self.buf[start + RECORD_HEAD..];
            if payload.len() > MAX_RECORD {
                return Err(LogError::Corrupt {
                    path: self.path.clone(),
                    message: format!(
                        "a command of {} bytes is over the record limit",
                        payload.len()
                    ),
                });
            }
            let len = (payload.len() as u32).to_le_bytes();
            let crc = crc32c::crc32c(payload).to_le_bytes();
            self.buf[start..start + 4].copy_from_slice(&len);
            self.buf[start + 4..start + 8].copy_from_slice(&crc32c::crc32c(&len).to_le_bytes());
            self.buf[start + 8..start + 12].copy_from_slice(&crc);
        }
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part of the batch may be in the file (a full disk): cut it,
                // so the next append does not land behind half a record.
                let _ = self.file.set_len(self.len);
                let _ = self.file.sync_data();
                Err(io_at(&self.path)(e))
            }
        }
    }
}

/// What `todo-server data check|repair` found or did, one line per file.
pub struct Report {
    pub lines: Vec<String>,
    /// Damage that start-up refuses (check), or that could not be repaired.
    pub damaged: bool,
}

/// Check the state file and every command log in `dir` without changing
/// anything.
pub fn check(dir: &Path) -> Result<Report, LogError> {
    let mut report = Report {
        lines: Vec::new(),
        damaged: false,
    };
    let state_path = dir.join(STATE_FILE);
    let covered = match read_state(&state_path) {
        Ok(Some(state)) => {
            report.lines.push(format!(
                "{}: ok, {} todos, covers command logs before generation {}",
                state_path.display(),
                state.image.todos.len(),
                state.generation
            ));
            state.generation
        }
        Ok(None) => {
            report
                .lines
                .push(format!("{}: none yet", state_path.display()));
            0
        }
        Err(e) => {
            report.lines.push(format!("{e}"));
            report.damaged = true;
            0
        }
    };
    for g in log_generations(dir)? {
        let path = log_path_for(dir, g);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let scan = scan(&bytes);
        let mut line = format!(
            "{}: {} records in {} bytes{}",
            path.display(),
            scan.records.len(),
            bytes.len(),
            if scan.legacy {
                " (JSON lines, no checksums)"
            } else {
                ""
            }
        );
        if g < covered {
            line.push_str("; already in the state file, removed at the next start");
        }
        match scan.tail {
            Tail::Clean => line.push_str("; ok"),
            Tail::Torn { offset, bytes } => line.push_str(&format!(
                "; ok, with an incomplete last record at byte {offset} ({bytes} bytes, never acknowledged; cut off at start-up)"
            )),
            Tail::Damaged { offset, reason } => {
                report.damaged = true;
                line.push_str(&format!(
                    "; DAMAGED at byte {offset}: {reason} ({} bytes from there; `todo-server data repair` keeps the {} records before it)",
                    bytes.len() as u64 - offset,
                    scan.records.len()
                ));
            }
        }
        report.lines.push(line);
    }
    Ok(report)
}

/// Make every command log in `dir` start-able: a damaged or torn log is
/// rewritten with its good records only, and the original is kept beside
/// it as `commands.G.log.damaged-<unix ms>`. A damaged state file cannot be
/// repaired here (it is the base every log applies to). Takes the data
/// directory's lock: the server must not be running.
pub fn repair(dir: &Path) -> Result<Report, LogError> {
    let _lock = lock(dir)?;
    let mut report = check(dir)?;
    if let Err(e) = read_state(&dir.join(STATE_FILE)) {
        report
            .lines
            .push(format!("cannot repair: {e}; restore it from a backup"));
        return Ok(report);
    }
    report.damaged = false;
    for g in log_generations(dir)? {
        let path = log_path_for(dir, g);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let scan = scan(&bytes);
        if scan.tail == Tail::Clean {
            continue;
        }
        let aside = path.with_extension(format!("log.damaged-{}", todo_model::now_ms()));
        let tmp = path.with_extension("log.tmp");
        let _ = fs::remove_file(&tmp);
        // Today's format: the header, then the good records.
        let mut log = CommandLog::create(&tmp)?;
        if !scan.legacy && scan.good_len > 0 {
            log.file
                .write_all(&bytes[LOG_MAGIC.len()..scan.good_len as usize])
                .map_err(io_at(&tmp))?;
        } else {
            let cmds: Vec<&TodoCommand> = scan.records.iter().map(|(_, c)| c).collect();
            if !cmds.is_empty() {
                log.append(&cmds)?;
            }
        }
        log.file.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&path, &aside).map_err(io_at(&aside))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        sync_dir(dir)?;
        report.lines.push(format!(
            "{}: kept {} records; the original is {}",
            path.display(),
            scan.records.len(),
            aside.display()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_data_directory_has_one_owner_at_a_time() {
        let dir = std::env::temp_dir().join(format!("todo-lock-{}", std::process::id()));
        let first = lock(&dir).unwrap();
        assert!(matches!(lock(&dir), Err(LogError::InUse(_))));
        drop(first);
        lock(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;
    use todo_model::{Fields, Op};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("todo-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn cmd(id: u64) -> TodoCommand {
        TodoCommand {
            command_id: id,
            op: Op::Create,
            todo_id: id,
            user: "u".into(),
            fields: Fields {
                title: Some("x".into()),
                ..Fields::default()
            },
            issued_at: 1,
            name: None,
            password_hash: None,
            idempotency: None,
        }
    }

    fn empty() -> StoreImage {
        StoreImage {
            version: 0,
            todos: vec![],
            users: vec![],
            categories: vec![],
            keys: vec![],
        }
    }

    /// A log of `n` commands, as the server writes it.
    fn log_bytes(d: &Path, n: u64) -> Vec<u8> {
        let (_, mut log, _) = open(d, empty).unwrap();
        for id in 1..=n {
            log.append(&[&cmd(id)]).unwrap();
        }
        fs::read(&log.path).unwrap()
    }

    fn ids(scan: &Scan) -> Vec<u64> {
        scan.records.iter().map(|(_, c)| c.command_id).collect()
    }

    #[test]
    fn appended_commands_survive_reopen_and_a_torn_tail() {
        let d = dir("reopen");
        let record;
        {
            let (mut store, mut log, _) = open(&d, empty).unwrap();
            let (a, b) = (cmd(1), cmd(2));
            log.append(&[&a, &b]).unwrap();
            store.apply(&a);
            store.apply(&b);
            // A crash in the middle of the next append: a prefix of a record.
            let before = fs::read(&log.path).unwrap().len();
            log.append(&[&cmd(3)]).unwrap();
            let all = fs::read(&log.path).unwrap();
            record = all[before..].to_vec();
            log.file.set_len(before as u64).unwrap();
            log.file.write_all(&record[..record.len() / 2]).unwrap();
        }
        assert!(record.len() > RECORD_HEAD);
        let (store, _, replayed) = open(&d, || panic!("state exists; must not seed")).unwrap();
        assert_eq!(replayed, 2);
        assert_eq!(store.len(), 2);
        // Compaction: the next open replays nothing and keeps everything.
        let (store, _, replayed) = open(&d, empty).unwrap();
        assert_eq!((store.len(), replayed), (2, 0));
        assert!(store.version() >= 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_cut_is_a_torn_tail_that_keeps_the_records_before_it() {
        let d = dir("cuts");
        let bytes = log_bytes(&d, 3);
        let ends: Vec<usize> = {
            let s = scan(&bytes);
            let mut e: Vec<usize> = s.records.iter().skip(1).map(|(o, _)| *o as usize).collect();
            e.push(bytes.len());
            e
        };
        for cut in LOG_MAGIC.len()..bytes.len() {
            let s = scan(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.records.len(), whole, "cut at {cut}");
            let at_boundary = cut == LOG_MAGIC.len() || ends.contains(&cut);
            if at_boundary {
                assert_eq!(s.tail, Tail::Clean, "cut at {cut}");
            } else {
                assert!(
                    matches!(s.tail, Tail::Torn { .. }),
                    "cut at {cut}: {:?}",
                    s.tail
                );
            }
        }
        // Zeros after the last record (a file extended before its data).
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 100]);
        let s = scan(&zeros);
        assert_eq!(
            (ids(&s), s.tail),
            (
                vec![1, 2, 3],
                Tail::Torn {
                    offset: bytes.len() as u64,
                    bytes: 100
                }
            )
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn every_flipped_byte_is_damage_never_a_shorter_log() {
        let d = dir("flips");
        let bytes = log_bytes(&d, 3);
        for at in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= mask;
                let s = scan(&bad);
                match s.tail {
                    Tail::Damaged { offset, .. } => {
                        assert!(
                            offset as usize <= at,
                            "flip at {at}: damage reported at {offset}"
                        );
                        // Every record before the damage is intact.
                        assert!(s
                            .records
                            .iter()
                            .all(|(o, c)| (*o as usize) < at && c.command_id <= 3));
                    }
                    other => panic!(
                        "flip of {mask:#x} at {at}: {other:?}, records {:?}",
                        ids(&s)
                    ),
                }
            }
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_log_stops_start_up_and_changes_nothing_until_repaired() {
        let d = dir("damaged");
        let bytes = log_bytes(&d, 5);
        let log = d.join("commands.1.log");
        let second = scan(&bytes).records[1].0 as usize;
        let mut bad = bytes.clone();
        bad[second + RECORD_HEAD + 3] ^= 0x20;
        fs::write(&log, &bad).unwrap();
        let state = fs::read(d.join(STATE_FILE)).unwrap();
        let listing = |d: &Path| {
            let mut names: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let files = listing(&d);
        match open(&d, empty) {
            Err(LogError::Damaged { path, offset, .. }) => {
                assert_eq!((path, offset), (log.clone(), second as u64));
            }
            other => panic!("opened a damaged log: {:?}", other.err()),
        }
        assert_eq!(fs::read(&log).unwrap(), bad, "the log is untouched");
        assert_eq!(
            fs::read(d.join(STATE_FILE)).unwrap(),
            state,
            "the state is untouched"
        );
        assert_eq!(listing(&d), files, "nothing added or removed");
        assert!(check(&d).unwrap().damaged);

        let repaired = repair(&d).unwrap();
        assert!(!repaired.damaged, "{:?}", repaired.lines);
        assert!(!check(&d).unwrap().damaged);
        let aside: Vec<_> = listing(&d)
            .into_iter()
            .filter(|n| n.to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            fs::read(d.join(&aside[0])).unwrap(),
            bad,
            "the original is kept"
        );
        let (store, _, replayed) = open(&d, empty).unwrap();
        assert_eq!((replayed, store.len()), (1, 1));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_from_before_checksums_are_read() {
        let d = dir("legacy");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join(STATE_FILE),
            br#"{"generation":1,"version":3,"todos":[]}"#,
        )
        .unwrap();
        let lines: String = (1..=3)
            .map(|i| format!("{}\n", sonic_rs::to_string(&cmd(i)).unwrap()))
            .collect();
        fs::write(
            d.join("commands.1.log"),
            format!("{lines}{{\"command_id\":4,\"op"),
        )
        .unwrap();
        let (store, _, replayed) = open(&d, || panic!("must not seed")).unwrap();
        assert_eq!((replayed, store.len()), (3, 3));
        // Written again with a checksum, and read back.
        assert!(fs::read(d.join(STATE_FILE))
            .unwrap()
            .starts_with(STATE_MAGIC.as_bytes()));
        let (store, _, _) = open(&d, empty).unwrap();
        assert_eq!(store.len(), 3);
        // A bad line in the middle of an old log is damage too.
        let s = scan(format!("{lines}garbage\n{lines}").as_bytes());
        assert_eq!((s.records.len(), s.legacy), (3, true));
        assert!(matches!(s.tail, Tail::Damaged { .. }));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_fuzz_seeds_read_as_intended() {
        // Written by hand (fuzz/corpus), so they also check the format's
        // description against the code.
        let seed = |name: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/command_log")
                .join(name);
            scan(&fs::read(path).unwrap())
        };
        let two = seed("two_records");
        assert_eq!(
            (ids(&two), two.tail, two.legacy),
            (vec![1, 2], Tail::Clean, false)
        );
        let torn = seed("torn");
        assert_eq!(ids(&torn), vec![1]);
        assert!(matches!(torn.tail, Tail::Torn { .. }));
        let lines = seed("json_lines");
        assert_eq!(
            (ids(&lines), lines.tail, lines.legacy),
            (vec![1, 2], Tail::Clean, true)
        );
    }

    #[test]
    fn a_state_file_that_fails_its_checksum_is_refused() {
        let d = dir("state");
        log_bytes(&d, 1);
        let path = d.join(STATE_FILE);
        let mut state = fs::read(&path).unwrap();
        let last = state.len() - 2;
        state[last] ^= 0x01;
        fs::write(&path, &state).unwrap();
        assert!(matches!(open(&d, empty), Err(LogError::Corrupt { .. })));
        assert!(check(&d).unwrap().damaged);
        fs::remove_dir_all(&d).unwrap();
    }
}
