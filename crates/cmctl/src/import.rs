//! `cmctl agents import`: registers any number of agents from a file, 10,000 per call through
//! the bulk route, and writes the new agents' keys to a file only its owner can read.

use std::io::{BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use cm_client::{Client, NewAgent};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::render::Out;
use crate::{Failed, Res, on_terminal};

/// The most agents one call of the bulk route takes.
pub(crate) const BATCH: usize = 10_000;

/// One line of the file: CSV `id,group;group` (no groups: `id` or `id,`) or a JSON object
/// `{"id": …, "groups": […]}`. Blank lines and `#` comments are skipped (`None`), and so is a
/// CSV header line `id,groups`.
pub(crate) fn parse_line(line: &str, n: usize) -> Result<Option<NewAgent>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        return serde_json::from_str::<NewAgent>(line)
            .map(Some)
            .map_err(|e| format!("line {n}: {e}"));
    }
    let (id, groups) = line.split_once(',').unwrap_or((line, ""));
    let (id, groups) = (id.trim(), groups.trim());
    if n == 1 && id.eq_ignore_ascii_case("id") {
        return Ok(None);
    }
    if id.is_empty() {
        return Err(format!("line {n}: no agent id"));
    }
    Ok(Some(NewAgent {
        id: id.to_owned(),
        groups: groups
            .split(';')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
}

fn read_all(file: &str) -> Result<Vec<NewAgent>, String> {
    let reader: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).map_err(|e| format!("cannot open {file}: {e}"))?,
        ))
    };
    let mut agents = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {file}: {e}"))?;
        if let Some(a) = parse_line(&line, i + 1)? {
            agents.push(a);
        }
    }
    Ok(agents)
}

/// Creates (or truncates) `path` readable and writable by its owner only.
fn keys_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: narrow it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

pub(crate) async fn run(c: &Client, out: &Out, file: &str, keys: &Path) -> Res {
    let agents = read_all(file).map_err(Failed::Error)?;
    let mut keys_out = keys_file(keys)
        .map_err(|e| Failed::Error(format!("cannot create {}: {e}", keys.display())))?;
    let bar = (!out.json && on_terminal()).then(|| {
        let b = ProgressBar::new(agents.len() as u64);
        b.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} agents")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let (mut created, mut updated) = (0_u64, 0_u64);
    for (i, batch) in agents.chunks(BATCH).enumerate() {
        let answer = c.put_agents(batch).await.map_err(|e| {
            let done = created + updated;
            match Failed::from(e) {
                Failed::Error(m) => Failed::Error(format!(
                    "batch {} (agents {} to {}): {m}; the {done} agents before it are registered and their keys are in {}",
                    i + 1,
                    i * BATCH + 1,
                    i * BATCH + batch.len(),
                    keys.display()
                )),
                other => other,
            }
        })?;
        for a in &answer {
            if let Some(key) = &a.key {
                writeln!(keys_out, "{},{key}", a.id)
                    .map_err(|e| Failed::Error(format!("cannot write {}: {e}", keys.display())))?;
            }
            if a.created {
                created += 1;
            } else {
                updated += 1;
            }
        }
        keys_out
            .flush()
            .map_err(|e| Failed::Error(format!("cannot write {}: {e}", keys.display())))?;
        if let Some(b) = &bar {
            b.inc(batch.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if out.json {
        out.print_json(&json!({
            "registered": created + updated,
            "created": created,
            "updated": updated,
            "keys": keys.display().to_string(),
        }));
    } else {
        println!(
            "registered {} agents: {created} new (keys in {}), {updated} updated",
            created + updated,
            keys.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_csv_or_json() {
        let a = parse_line("web-1,web;linux", 2).unwrap().unwrap();
        assert_eq!(
            (a.id.as_str(), a.groups),
            ("web-1", vec!["web".to_owned(), "linux".to_owned()])
        );
        assert_eq!(
            parse_line("solo", 3).unwrap().unwrap().groups,
            Vec::<String>::new()
        );
        assert_eq!(parse_line("id,groups", 1).unwrap(), None);
        assert_eq!(parse_line("  ", 4).unwrap(), None);
        let j = parse_line(r#"{"id": "a", "groups": ["g"]}"#, 5)
            .unwrap()
            .unwrap();
        assert_eq!(j.groups, ["g"]);
        assert!(parse_line(",g", 6).unwrap_err().contains("line 6"));
        assert!(parse_line("{bad", 7).is_err());
    }

    #[test]
    fn the_keys_file_is_its_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(keys_file(&p).unwrap());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"");
    }
}
