//! A small tmpfs to run out of space on, and a ballast file that fills it:
//! the real ENOSPC, for the engine's and the server's full-disk tests.
//! Mounting needs root (CAP_SYS_ADMIN); where it is not permitted,
//! [`Tmpfs::mount`] says why and the test skips.

#![allow(clippy::unwrap_used, dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a fixed size mounted on a fresh directory, unmounted on drop
/// (even when the test fails).
pub struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, with the reason printed, where mounting is not permitted.
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let mount_point = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { mount_point }),
            Ok(out) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs ({})",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount ({e})");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open: detach the mount now, the
            // kernel frees it when the last file closes.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A file that takes up the file system's free space.
pub struct Ballast {
    path: PathBuf,
}

impl Ballast {
    /// Writes to `dir/ballast` until the file system is full.
    pub fn fill(dir: &Path) -> Ballast {
        let path = dir.join("ballast");
        let mut file = File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        Ballast { path }
    }

    /// Gives `bytes` back to the file system, keeping the rest taken.
    pub fn shrink_by(&self, bytes: u64) {
        let file = File::options().write(true).open(&self.path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(bytes)).unwrap();
    }

    pub fn delete(self) {
        std::fs::remove_file(&self.path).unwrap();
    }
}
