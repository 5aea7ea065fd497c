//! Watching files for changes: the downward API annotations file of a pod, a webhook's
//! certificate. The kubelet rewrites projected files with an atomic symlink swap (a new
//! timestamped directory, then `..data` is renamed over), so the watch is on the file's directory
//! and reacts to changes of the file itself or of `..data`; reads (access events, which notify
//! raises for the watcher's own reads too) and other names are ignored.

use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Name the kubelet's atomic writer gives the symlink to the current version of the files.
const KUBELET_DATA_LINK: &str = "..data";
/// Changes are gathered this long before a file is read, so one kubelet swap (several events)
/// is one change.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Watches the directory of `file` and signals changes of the file or of the kubelet's `..data`
/// link. The watcher stops when dropped.
pub fn watch_file(
    file: &str,
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>), notify::Error> {
    watch_files(&[PathBuf::from(file)])
}

/// [`watch_file`] for several files (the injector's certificate and key), in one or more
/// directories.
pub fn watch_files(
    files: &[PathBuf],
) -> Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<()>), notify::Error> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut names: Vec<std::ffi::OsString> = vec![KUBELET_DATA_LINK.into()];
    for path in files {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        names.extend(path.file_name().map(|n| n.to_owned()));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        // Reading the file (ours included) raises access events; only changes matter.
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = ev
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok((watcher, rx))
}
