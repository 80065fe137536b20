//! Small files of a data directory (a node's id, its incarnations), replaced durably: a
//! crash leaves the old content or the new, whole, never a mix or an empty file.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Makes `bytes` the content of `path`: written aside, synced, renamed into place (rename
/// is atomic), the directory synced so that the new name is durable too.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        // A relative path of one component: its directory is the working directory.
        Some(dir) if dir.as_os_str().is_empty() => Path::new("."),
        Some(dir) => dir,
        None => return Ok(()),
    };
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_content_replaces_the_old_and_nothing_is_left_aside() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("node-id");
        replace_durably(&path, b"1\n").unwrap();
        replace_durably(&path, b"2\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["node-id"]);
    }
}
