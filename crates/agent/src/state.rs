//! What the agent remembers of the orders it ran, so that a redelivered order is never run
//! twice: one small JSON file per order in the state directory (or only in memory without
//! one), written before the handler starts and again with its result; pruned by age.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// One order's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Entry {
    /// The handler was started (and may still run, or the agent stopped while it ran).
    Started,
    /// The handler ended: the result to report (again, on a redelivery).
    Done {
        status: String,
        code: i16,
        message: String,
        data: String,
    },
}

/// The entries, on disk when a directory is given.
#[derive(Debug)]
pub struct State {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Entry>>,
}

impl State {
    /// # Errors
    /// When the directory cannot be created.
    pub fn open(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d)?;
        }
        Ok(Self {
            dir,
            memory: Mutex::new(HashMap::new()),
        })
    }

    /// Order ids are UUIDs (checked by the caller), so they are safe file names.
    fn path(&self, order_id: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{order_id}.json")))
    }

    #[must_use]
    pub fn get(&self, order_id: &str) -> Option<Entry> {
        if let Some(e) = self.memory.lock().expect("state").get(order_id) {
            return Some(e.clone());
        }
        let text = std::fs::read(self.path(order_id)?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records `entry` durably (a temporary file renamed over the old one) before returning.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn put(&self, order_id: &str, entry: &Entry) -> std::io::Result<()> {
        if let Some(path) = self.path(order_id) {
            let tmp = path.with_extension("tmp");
            let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
        }
        self.memory
            .lock()
            .expect("state")
            .insert(order_id.to_owned(), entry.clone());
        Ok(())
    }

    /// Forgets the entries older than `max_age` (by the file's modification time); returns how
    /// many were removed. The memory is cleared of entries no longer on disk.
    pub fn prune(&self, max_age: Duration) -> usize {
        let Some(dir) = &self.dir else {
            // Without a directory, memory is bounded by forgetting everything finished.
            let mut m = self.memory.lock().expect("state");
            let before = m.len();
            if before > 100_000 {
                m.retain(|_, e| matches!(e, Entry::Started));
            }
            return before - m.len();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= max_age);
            if old && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
                if let Some(stem) = e.path().file_stem().and_then(|s| s.to_str()) {
                    self.memory.lock().expect("state").remove(stem);
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_restart_and_are_pruned_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::open(Some(dir.path().to_owned())).unwrap();
        let done = Entry::Done {
            status: "success".into(),
            code: 0,
            message: String::new(),
            data: "ok".into(),
        };
        s.put("o1", &Entry::Started).unwrap();
        s.put("o1", &done).unwrap();
        let again = State::open(Some(dir.path().to_owned())).unwrap();
        assert_eq!(again.get("o1"), Some(done));
        assert_eq!(again.get("o2"), None);
        assert_eq!(again.prune(Duration::from_secs(3600)), 0);
        assert_eq!(again.prune(Duration::ZERO), 1);
        assert_eq!(
            State::open(Some(dir.path().to_owned())).unwrap().get("o1"),
            None
        );
    }
}
