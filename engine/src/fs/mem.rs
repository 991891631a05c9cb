//! [`MemFs`]: files in memory that model what survives a power loss.
//!
//! A file's bytes are durable up to its last sync; a name (created,
//! renamed, linked or unlinked) is durable once its directory was synced
//! after the change, a directory's name included (the root is always
//! there); a removed directory is gone at once. The disk
//! after a power loss holds the durable names, each file with its synced
//! bytes and a random part of the bytes appended after them (a torn write;
//! part of an append can reach the disk without a sync).
//!
//! Write-ahead logs ([`FileSystem::create_log`]) are modelled as `OsFs`
//! writes them, through a mapping with space reserved ahead: the file grows
//! in zero-filled steps of `RESERVE` bytes, is cut to its appended length
//! when its writer is dropped, and after a power loss may keep its full
//! length with zeros where the lost bytes were (a copy cut short) as well as
//! end early, and may lose the end of any page written after the last sync
//! while a later page keeps its bytes (pages are written back independently).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{FileBytes, FileSystem, RandomAccessFile, WritableFile, PAGE};

/// An in-memory file system that can lose power; see the [module docs](super).
///
/// Clones share the same files.
#[derive(Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Every name as it is now.
    names: BTreeMap<PathBuf, Node>,
    /// Every name as the last sync of its directory left it.
    durable: BTreeMap<PathBuf, Node>,
    locks: BTreeSet<PathBuf>,
    /// Changing operations so far (creates, appends, syncs, renames, ...).
    ops: u64,
    /// The power goes after this many changing operations.
    cut_after: Option<u64>,
    /// The disk as the power cut left it; set once the power is off, after
    /// which every operation fails.
    image: Option<BTreeMap<PathBuf, Node>>,
    /// State of the generator that picks how much of an unsynced tail survives.
    rng: u64,
}

#[derive(Clone)]
enum Node {
    Dir,
    File(Arc<Mutex<Inode>>),
}

/// How much a write-ahead log grows at a time, zero-filled.
const RESERVE: usize = 4096;

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// Bytes made durable by a sync.
    synced: usize,
    /// A write-ahead log with space reserved ahead: a power loss may zero
    /// its lost bytes in place instead of cutting them off.
    reserved: bool,
    /// For a write-ahead log, where each append since the last sync ended:
    /// the points at which a page can have been written back.
    append_ends: Vec<usize>,
}

fn power_off() -> io::Error {
    io::Error::other("the power is off (MemFs power cut)")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

/// The next number of a xorshift sequence.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Zeros, in some of the pages of `data` past `synced`, the bytes from a
/// point where the page can have been written back (its start, or where an
/// append in it ended: `append_ends`) to the end of the page: what a power
/// cut leaves of pages dirtied again after their last writeback (module
/// docs). A writeback that caught a page in the middle of a copy is not
/// modelled: it lasts nanoseconds, appends come microseconds apart.
fn lose_page_suffixes(data: &mut [u8], synced: usize, append_ends: &[usize], rng: &mut u64) {
    let mut page = synced / PAGE * PAGE;
    while page < data.len() {
        let roll = next_random(rng);
        let end = (page + PAGE).min(data.len());
        // Its start, or the sync point in it: a sync wrote the page back,
        // and appends after it dirtied the page again.
        let points: Vec<usize> = std::iter::once(page.max(synced))
            .chain(append_ends.iter().copied())
            .filter(|&at| at >= synced && at >= page && at < end)
            .collect();
        let pick = (roll >> 8) as usize % points.len().max(1);
        if let (true, Some(&from)) = (roll.is_multiple_of(4), points.get(pick)) {
            data.get_mut(from..end).unwrap_or_default().fill(0);
        }
        page += PAGE;
    }
}

impl State {
    /// Counts a changing operation; fails once the power is off, and cuts it
    /// when the count is reached.
    fn step(&mut self) -> io::Result<()> {
        self.alive()?;
        self.ops += 1;
        if self.cut_after.is_some_and(|n| self.ops > n) {
            self.image = Some(self.surviving());
            return Err(power_off());
        }
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        match self.image {
            Some(_) => Err(power_off()),
            None => Ok(()),
        }
    }

    /// What a power loss now would leave: durable names, synced bytes, and
    /// a random prefix of each unsynced tail. Hard links stay one file.
    fn surviving(&mut self) -> BTreeMap<PathBuf, Node> {
        if self.rng == 0 {
            // Never seeded (no cut was set): any fixed start will do.
            self.rng = 0x9e37_79b9_7f4a_7c15;
        }
        let mut copies: HashMap<*const Mutex<Inode>, Arc<Mutex<Inode>>> = HashMap::new();
        let mut image = BTreeMap::new();
        for (path, node) in &self.durable {
            let node = match node {
                Node::Dir => Node::Dir,
                Node::File(inode) => {
                    let copy = copies.entry(Arc::as_ptr(inode)).or_insert_with(|| {
                        let inode = inode.lock();
                        let unsynced = inode.data.len() - inode.synced;
                        let roll = next_random(&mut self.rng);
                        let kept = inode.synced + (roll % (unsynced as u64 + 1)) as usize;
                        let mut data = inode.data.get(..kept).unwrap_or_default().to_vec();
                        if inode.reserved && (roll & (1 << 40)) != 0 {
                            data.resize(inode.data.len(), 0);
                        }
                        if inode.reserved && (roll & (1 << 41)) != 0 {
                            lose_page_suffixes(
                                &mut data,
                                inode.synced,
                                &inode.append_ends,
                                &mut self.rng,
                            );
                        }
                        Arc::new(Mutex::new(Inode {
                            synced: data.len(),
                            data,
                            reserved: false,
                            append_ends: Vec::new(),
                        }))
                    });
                    Node::File(copy.clone())
                }
            };
            image.insert(path.clone(), node);
        }
        image
    }

    fn file(&self, path: &Path) -> io::Result<Arc<Mutex<Inode>>> {
        self.alive()?;
        match self.names.get(path) {
            Some(Node::File(inode)) => Ok(inode.clone()),
            Some(Node::Dir) => Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            ))),
            None => Err(not_found(path)),
        }
    }

    fn check_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if p.as_os_str().is_empty() || matches!(self.names.get(p), Some(Node::Dir)) => {
                Ok(())
            }
            Some(p) => Err(not_found(p)),
            None => Ok(()),
        }
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new file at `path`; `reserved`: a write-ahead log (module docs).
    fn create(&self, path: &Path, reserved: bool) -> io::Result<Box<dyn WritableFile>> {
        let mut state = self.state.lock();
        state.step()?;
        state.check_parent(path)?;
        if state.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let inode = Arc::new(Mutex::new(Inode {
            reserved,
            ..Inode::default()
        }));
        state
            .names
            .insert(path.to_path_buf(), Node::File(inode.clone()));
        Ok(Box::new(MemWritable {
            fs: self.clone(),
            inode,
            appended: reserved.then_some(0),
        }))
    }

    /// Cuts the power after `ops` more changing operations (creates,
    /// appends, syncs, truncations, renames, unlinks, links, directory
    /// syncs): that operation and every later one fails. `seed` picks how
    /// much of each unsynced tail survives.
    pub fn cut_power_after(&self, ops: u64, seed: u64) {
        let mut state = self.state.lock();
        state.cut_after = Some(state.ops + ops);
        state.rng = seed | 1;
    }

    /// Whether the power has been cut.
    pub fn power_is_off(&self) -> bool {
        self.state.lock().image.is_some()
    }

    /// Changing operations done so far.
    pub fn operations(&self) -> u64 {
        self.state.lock().ops
    }

    /// The disk the machine boots with after losing power: as the cut left
    /// it, or, with the power still on, as a loss now would leave it.
    pub fn after_power_loss(&self) -> MemFs {
        let mut state = self.state.lock();
        let image = match &state.image {
            Some(image) => image.clone(),
            None => state.surviving(),
        };
        MemFs {
            state: Arc::new(Mutex::new(State {
                names: image.clone(),
                durable: image,
                rng: state.rng,
                ..State::default()
            })),
        }
    }
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemFs")
            .field("names", &state.names.len())
            .field("ops", &state.ops)
            .field("power_off", &state.image.is_some())
            .finish()
    }
}

impl FileSystem for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            match state.names.get(d) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => {
                    return Err(io::Error::other(format!("{} is a file", d.display())))
                }
                None => {
                    state.names.insert(d.to_path_buf(), Node::Dir);
                    if d.parent().is_none() {
                        state.durable.insert(d.to_path_buf(), Node::Dir);
                    }
                }
            }
        }
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create(path, false)
    }

    fn create_log(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.create(path, true)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        let inode = self.state.lock().file(path)?;
        Ok(Arc::new(MemReadable {
            fs: self.clone(),
            inode,
        }))
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let inode = self.state.lock().file(path)?;
        let bytes = inode.lock().data.clone();
        Ok(FileBytes::from_vec(bytes))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        state.check_parent(to)?;
        let node = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        state.file(path)?;
        state.names.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        if !matches!(state.names.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        state.names.retain(|p, _| !p.starts_with(dir));
        state.durable.retain(|p, _| !p.starts_with(dir));
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let state = self.state.lock();
        state.alive()?;
        if !matches!(state.names.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        self.state.lock().names.contains_key(path)
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        let inode = self.state.lock().file(path)?;
        let len = inode.lock().data.len();
        Ok(len as u64)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        if !matches!(state.names.get(dir), Some(Node::Dir)) {
            return Err(not_found(dir));
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        state.durable.retain(|p, _| !in_dir(p));
        let entries: Vec<_> = state
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        state.durable.extend(entries);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.lock();
        state.step()?;
        state.check_parent(to)?;
        let inode = state.file(from)?;
        if state.names.contains_key(to) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        state.names.insert(to.to_path_buf(), Node::File(inode));
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn fmt::Debug + Send + Sync>> {
        let mut state = self.state.lock();
        state.alive()?;
        state.check_parent(path)?;
        if !state.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !state.names.contains_key(path) {
            state.names.insert(
                path.to_path_buf(),
                Node::File(Arc::new(Mutex::new(Inode::default()))),
            );
        }
        Ok(Box::new(MemLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

struct MemWritable {
    fs: MemFs,
    inode: Arc<Mutex<Inode>>,
    /// For a write-ahead log, the bytes appended (the rest is reserved).
    appended: Option<usize>,
}

impl WritableFile for MemWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.fs.state.lock().step()?;
        let mut inode = self.inode.lock();
        let Some(at) = self.appended else {
            inode.data.extend_from_slice(data);
            return Ok(());
        };
        let end = at + data.len();
        if inode.data.len() < end {
            inode.data.resize(end.next_multiple_of(RESERVE), 0);
        }
        if let Some(to) = inode.data.get_mut(at..end) {
            to.copy_from_slice(data);
        }
        inode.append_ends.push(end);
        self.appended = Some(end);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.fs.state.lock().step()?;
        let mut inode = self.inode.lock();
        // What is later copied over a log's reserved zeros is not durable.
        // (A power cut may then also cut the synced zeros off; the reader
        // takes both for the end of the log.)
        inode.synced = self.appended.unwrap_or(inode.data.len());
        inode.append_ends.clear();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.fs.state.lock().step()?;
        let mut inode = self.inode.lock();
        let len = usize::try_from(len).map_err(io::Error::other)?;
        inode.data.truncate(len);
        inode.synced = inode.synced.min(len);
        inode.append_ends.retain(|&end| end <= len);
        if self.appended.is_some() {
            self.appended = Some(len);
        }
        Ok(())
    }
}

impl Drop for MemWritable {
    /// A write-ahead log is cut to what was appended, unsynced, as
    /// `OsFs` does; not once the power is off.
    fn drop(&mut self) {
        if let Some(len) = self.appended {
            if self.fs.state.lock().alive().is_ok() {
                let mut inode = self.inode.lock();
                inode.data.truncate(len);
                inode.synced = inode.synced.min(len);
            }
        }
    }
}

#[derive(Debug)]
struct MemReadable {
    fs: MemFs,
    inode: Arc<Mutex<Inode>>,
}

impl fmt::Debug for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Inode({} bytes, {} synced)",
            self.data.len(),
            self.synced
        )
    }
}

impl RandomAccessFile for MemReadable {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fs.state.lock().alive()?;
        let inode = self.inode.lock();
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| inode.data.get(o..))
            .unwrap_or_default();
        let n = buf.len().min(rest.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), rest.get(..n)) {
            to.copy_from_slice(from);
        }
        Ok(n)
    }
}

#[derive(Debug)]
struct MemLock {
    fs: MemFs,
    path: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.fs.state.lock().locks.remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &MemFs, path: &str, bytes: &[u8], sync: bool) {
        let mut f = fs.create_new(Path::new(path)).unwrap();
        f.append(bytes).unwrap();
        if sync {
            f.sync().unwrap();
        }
    }

    fn read(fs: &MemFs, path: &str) -> Option<Vec<u8>> {
        super::super::read_all(fs, Path::new(path)).ok()
    }

    #[test]
    fn a_power_loss_keeps_synced_bytes_under_synced_names() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/synced", b"abc", true);
        write(&fs, "/d/unsynced", b"xyz", false);
        fs.sync_dir(Path::new("/d")).unwrap();
        write(&fs, "/d/unnamed", b"123", true);
        let after = fs.after_power_loss();
        assert_eq!(read(&after, "/d/synced").as_deref(), Some(&b"abc"[..]));
        let torn = read(&after, "/d/unsynced").unwrap();
        assert!(b"xyz".starts_with(&torn), "a prefix of the unsynced bytes");
        assert_eq!(
            read(&after, "/d/unnamed"),
            None,
            "its directory was not synced"
        );
    }

    #[test]
    fn renames_and_unlinks_need_a_directory_sync() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/a", b"a", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.rename(Path::new("/d/a"), Path::new("/d/b")).unwrap();
        let after = fs.after_power_loss();
        assert!(after.exists(Path::new("/d/a")) && !after.exists(Path::new("/d/b")));
        fs.sync_dir(Path::new("/d")).unwrap();
        let after = fs.after_power_loss();
        assert!(!after.exists(Path::new("/d/a")) && after.exists(Path::new("/d/b")));
    }

    #[test]
    fn the_power_cut_fails_every_later_operation() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create_new(Path::new("/d/f")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.append(b"kept").unwrap();
        f.sync().unwrap();
        fs.cut_power_after(1, 7);
        f.append(b"maybe").unwrap();
        assert!(f.sync().is_err());
        assert!(fs.power_is_off());
        assert!(fs.open(Path::new("/d/f")).is_err());
        let after = fs.after_power_loss();
        let bytes = read(&after, "/d/f").unwrap();
        assert!(bytes.starts_with(b"kept") && b"keptmaybe".starts_with(&bytes[..]));
    }

    #[test]
    fn locks_are_exclusive_until_dropped() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let lock = fs.lock(Path::new("/d/LOCK")).unwrap();
        let err = fs.lock(Path::new("/d/LOCK")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(lock);
        fs.lock(Path::new("/d/LOCK")).unwrap();
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/a/b")).unwrap();
        let after = fs.after_power_loss();
        assert!(!after.exists(Path::new("/a")), "nothing synced its name");
        super::super::create_dir_durably(&fs, Path::new("/c/d")).unwrap();
        let after = fs.after_power_loss();
        assert!(after.exists(Path::new("/c/d")));
    }

    /// A new write-ahead log at `path` whose name (and directory) survive
    /// a power loss.
    fn durable_log(fs: &MemFs, path: &Path) -> Box<dyn WritableFile> {
        let dir = path.parent().unwrap();
        super::super::create_dir_durably(fs, dir).unwrap();
        let log = fs.create_log(path).unwrap();
        fs.sync_dir(dir).unwrap();
        log
    }

    /// Seeds the power-loss generator, spreading small seeds over all bits.
    fn reseed(fs: &MemFs, seed: u64) {
        fs.state.lock().rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    }

    #[test]
    fn a_log_holds_reserved_zeros_until_dropped_and_may_keep_them_after_a_power_loss() {
        let fs = MemFs::new();
        let path = Path::new("/d/000001.log");
        let mut log = durable_log(&fs, path);
        log.append(b"synced").unwrap();
        log.sync().unwrap();
        log.append(b"lost").unwrap();
        assert_eq!(fs.file_size(path).unwrap(), RESERVE as u64);
        let mut zeroed_in_place = false;
        for seed in 1..64u64 {
            reseed(&fs, seed);
            let after = fs.after_power_loss();
            let bytes = read(&after, "/d/000001.log").unwrap();
            assert_eq!(&bytes[..6], b"synced");
            // A prefix of the unsynced append, then nothing or zeros.
            let tail = &bytes[6..];
            let kept = tail.iter().zip(b"lost").take_while(|(a, b)| a == b).count();
            assert!(tail[kept..].iter().all(|&b| b == 0), "{bytes:?}");
            zeroed_in_place |= bytes.len() == RESERVE;
        }
        assert!(zeroed_in_place, "some power loss keeps the length, zeroed");
        drop(log);
        assert_eq!(read(&fs, "/d/000001.log").unwrap(), b"syncedlost");
    }

    #[test]
    fn a_power_loss_may_lose_the_end_of_a_page_and_keep_a_later_one() {
        let fs = MemFs::new();
        let path = Path::new("/d/000001.log");
        let mut log = durable_log(&fs, path);
        let synced = vec![1u8; 1000];
        log.append(&synced).unwrap();
        log.sync().unwrap();
        let appended: Vec<u8> = (0..5 * PAGE).map(|i| (i % 251 + 1) as u8).collect();
        for piece in appended.chunks(700) {
            log.append(piece).unwrap();
        }
        // Where a page can have been written back: the sync point and
        // the end of each append.
        let ends: Vec<usize> = (0..=appended.len().div_ceil(700))
            .map(|k| 1000 + 700 * k)
            .collect();
        let mut holes = 0;
        for seed in 1..200u64 {
            reseed(&fs, seed);
            let bytes = read(&fs.after_power_loss(), "/d/000001.log").unwrap();
            assert_eq!(&bytes[..1000], &synced[..]);
            let tail = &bytes[1000..];
            // Every byte is what was appended there, or a zero...
            assert!(tail.iter().zip(&appended).all(|(&b, &a)| b == a || b == 0));
            // ...and zeros come as page suffixes: a kept byte after a lost one
            // starts a page.
            for (i, pair) in tail.windows(2).enumerate() {
                let at = 1000 + i + 1;
                if pair[0] == 0 && pair[1] != 0 {
                    assert_eq!(at % PAGE, 0, "a hole inside a page: {seed}");
                    holes += 1;
                }
                if pair[0] != 0 && pair[1] == 0 {
                    let cut_tail = tail[i + 1..].iter().all(|&b| b == 0);
                    let written_back = at % PAGE == 0 || ends.contains(&at);
                    assert!(cut_tail || written_back, "a loss inside an append: {seed}");
                }
            }
        }
        assert!(holes > 0, "some power loss keeps a page after a lost one");
    }
}
