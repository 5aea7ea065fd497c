//! The ports file: where a process listens, written once every listener is bound, so whoever
//! started it with port 0 (a test, a supervisor, `herald run` beside a busy machine) learns the
//! ports without racing for free ones. Like nats-server's `--ports_file_dir`, but one file named
//! by the caller.
//!
//! The file is one JSON object of listener name to `address:port`, e.g.
//! `{"publish":"127.0.0.1:41873","admin":"127.0.0.1:40211"}`. It is written to a temporary file
//! beside it and renamed into place, so a reader never sees half of it, and removed when the
//! process stops ([`PortsFile`] on drop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A written ports file; removed on drop.
#[derive(Debug)]
pub struct PortsFile {
    path: PathBuf,
}

impl PortsFile {
    /// Writes `listeners` (name and bound address) to `path`.
    pub fn write(path: &Path, listeners: &[(&str, SocketAddr)]) -> std::io::Result<Self> {
        let mut body = String::from("{");
        for (i, (name, addr)) in listeners.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            // Names are herald's own identifiers and addresses print without quotes or
            // backslashes, so no escaping is needed.
            body.push_str(&format!("\"{name}\":\"{addr}\""));
        }
        body.push_str("}\n");
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, body)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(PortsFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PortsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("herald-ports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ports.json");
        let file = PortsFile::write(
            &path,
            &[
                ("publish", "127.0.0.1:41873".parse().unwrap()),
                ("admin", "[::1]:9250".parse().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"publish\":\"127.0.0.1:41873\",\"admin\":\"[::1]:9250\"}\n"
        );
        // Nothing but the file itself is left in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        drop(file);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
        assert!(PortsFile::write(&dir.join("missing/ports.json"), &[]).is_err());
    }
}
