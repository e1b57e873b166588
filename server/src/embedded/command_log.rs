//! Durability for the embedded default: a state file plus a command log.
//!
//! ```text
//! DATA_DIR/state.json         StoreImage plus the log generation G it covers up to
//! DATA_DIR/commands.G.log     accepted commands since, one JSON line each
//! ```
//!
//! A batch of commands is appended with one write and made durable with one
//! `fdatasync` before any of them is acknowledged (group commit), so a 202
//! survives `kill -9` and power loss. At start-up the state is loaded, log G is
//! replayed, and the result is written as state G+1 (temporary file, fsync,
//! rename, directory fsync) before log G is removed; a crash at any step
//! leaves either the old state with its log or the new state, never a gap or
//! a double apply. A torn last line (a write cut short by a crash, so never
//! acknowledged) is cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use todo_model::TodoCommand;

use super::store::{Store, StoreImage};

const STATE_FILE: &str = "state.json";

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
    line: Vec<u8>,
}

/// Open `dir`: load or seed the state, replay and compact the log. Returns the
/// store and the log to append to, with how many commands were replayed.
pub fn open(
    dir: &Path,
    seed: impl FnOnce() -> StoreImage,
) -> Result<(Store, CommandLog, usize), LogError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let state_path = dir.join(STATE_FILE);
    let (generation, image) = match fs::read(&state_path) {
        Ok(bytes) => {
            let state: StateFile = sonic_rs::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                path: state_path.clone(),
                message: e.to_string(),
            })?;
            (state.generation, state.image)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, seed()),
        Err(e) => return Err(io_at(&state_path)(e)),
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

    let path = log_path_for(dir, next);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok((
        store,
        CommandLog {
            file,
            path,
            line: Vec::with_capacity(64 * 1024),
        },
        replayed,
    ))
}

fn log_path_for(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("commands.{generation}.log"))
}

fn replay(path: &Path, store: &mut Store) -> Result<usize, LogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_at(path)(e)),
    };
    let mut count = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(io_at(path))?;
        match sonic_rs::from_slice::<TodoCommand>(&line) {
            Ok(cmd) => {
                store.apply(&cmd);
                count += 1;
            }
            // Only the last line can be torn; it was never acknowledged.
            Err(_) => break,
        }
    }
    Ok(count)
}

fn write_state(dir: &Path, generation: u64, store: &Store) -> Result<(), LogError> {
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let state = StateFile {
        generation,
        image: store.image(),
    };
    let bytes = sonic_rs::to_vec(&state).map_err(|e| LogError::Corrupt {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
    f.write_all(&bytes).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    let path = dir.join(STATE_FILE);
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    sync_dir(dir)
}

fn remove_logs_before(dir: &Path, generation: u64) -> Result<(), LogError> {
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(g) = name
            .to_str()
            .and_then(|n| n.strip_prefix("commands."))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if g < generation {
            fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
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
    /// Append `cmds` and make them durable (one write, one fdatasync).
    pub fn append(&mut self, cmds: &[&TodoCommand]) -> Result<(), LogError> {
        self.line.clear();
        for cmd in cmds {
            sonic_rs::to_writer(&mut self.line, cmd).map_err(|e| LogError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            self.line.push(b'\n');
        }
        self.file.write_all(&self.line).map_err(io_at(&self.path))?;
        self.file.sync_data().map_err(io_at(&self.path))
    }
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
        }
    }

    fn empty() -> StoreImage {
        StoreImage {
            version: 0,
            todos: vec![],
        }
    }

    #[test]
    fn appended_commands_survive_reopen_and_a_torn_tail() {
        let d = dir("reopen");
        {
            let (mut store, mut log, _) = open(&d, empty).unwrap();
            let (a, b) = (cmd(1), cmd(2));
            log.append(&[&a, &b]).unwrap();
            store.apply(&a);
            // A crash in the middle of the next append.
            use std::io::Write;
            log.file.write_all(b"{\"command_id\":3,\"op\":").unwrap();
        }
        let (store, _, replayed) = open(&d, || panic!("state exists; must not seed")).unwrap();
        assert_eq!(replayed, 2);
        assert_eq!(store.len(), 2);
        // Compaction: the next open replays nothing and keeps everything.
        let (store, _, replayed) = open(&d, empty).unwrap();
        assert_eq!((store.len(), replayed), (2, 0));
        assert!(store.version() >= 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
