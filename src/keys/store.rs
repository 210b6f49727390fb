//! The key store on disk: header, shard files, the lock, and master-key rotation. The
//! file formats and why they are shaped so are in the [module documentation](super).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

use super::error::io_at;
use super::{
    DataKey, KEY_BYTES, KeyError, LookupKind, MasterKey, NONCE_BYTES, TAG_BYTES,
    equal_constant_time, random_bytes,
};

/// The key store's directory inside the data directory.
const KEYS_DIR: &str = "keys";
/// Master check and wrapped index key.
const HEADER_FILE: &str = "header";
/// Held locked while a [`KeyStore`] is open.
const LOCK_FILE: &str = "lock";
/// A rotation being written; dropped if a crash leaves it.
const STAGING_DIR: &str = "rotate.tmp";
/// A committed rotation whose files are being moved into place.
const READY_DIR: &str = "rotate-ready";
/// Suffix of a file being written to replace another by rename.
const TMP_SUFFIX: &str = ".tmp";

/// BLAKE3 `derive_key` context of the stored master check.
const CHECK_CONTEXT: &str = "rapport 2026 master-key check";
/// BLAKE3 `derive_key` context of the key that wraps data keys and the index key.
const WRAP_CONTEXT: &str = "rapport 2026 data-key wrapping";
/// Associated data of the wrapped index key (17 bytes, so never a customer id).
const INDEX_KEY_AD: &[u8] = b"rapport index key";

const HEADER_MAGIC: &[u8; 8] = b"RAPKEYS1";
/// A wrapped 32-byte key: ciphertext and tag.
const WRAPPED_BYTES: usize = KEY_BYTES + TAG_BYTES;
const HEADER_BYTES: usize = HEADER_MAGIC.len() + 32 + NONCE_BYTES + WRAPPED_BYTES + 32;

/// First byte of every frame in a shard file.
const FRAME_MAGIC: u8 = 0xA7;
/// Magic and body length.
const FRAME_HEADER_BYTES: usize = 1 + 4;
/// Truncated BLAKE3 of a frame's header and body.
const FRAME_SUM_BYTES: usize = 16;
const RECORD_KEY: u8 = 0x01;
const RECORD_TOMBSTONE: u8 = 0x02;
const UUID_BYTES: usize = 16;

/// Shards: one per first byte of the customer id. Enough that rewriting one on erasure
/// copies only 1/256 of the keys, few enough that all append handles stay open.
const SHARDS: usize = 256;

/// Makes the directory entries of files created, renamed or removed in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_at(dir))
}

/// The keys derived from a master key. The master key itself encrypts nothing, so the
/// check stored on disk and the wrapping never share a key.
struct Wrapping {
    check: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl Wrapping {
    fn new(master: &MasterKey) -> Self {
        let wrap_key = blake3::derive_key(WRAP_CONTEXT, master.bytes());
        Self {
            check: blake3::derive_key(CHECK_CONTEXT, master.bytes()),
            cipher: XChaCha20Poly1305::new(&wrap_key.into()),
        }
    }

    /// Encrypts a key under a fresh random nonce: wrapping is not deterministic, so the
    /// same key wrapped twice (a rewrite) never repeats bytes.
    fn wrap(
        &self,
        ad: &[u8],
        key: &[u8; KEY_BYTES],
    ) -> Result<([u8; NONCE_BYTES], [u8; WRAPPED_BYTES]), KeyError> {
        let nonce = random_bytes::<NONCE_BYTES>()?;
        let wrapped = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: key, aad: ad })
            .expect("XChaCha20-Poly1305 seals 32 bytes");
        Ok((nonce, wrapped.try_into().expect("key plus tag")))
    }

    fn unwrap(
        &self,
        ad: &[u8],
        nonce: &[u8; NONCE_BYTES],
        wrapped: &[u8; WRAPPED_BYTES],
    ) -> Option<[u8; KEY_BYTES]> {
        let plain = self
            .cipher
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: wrapped,
                    aad: ad,
                },
            )
            .ok()?;
        plain.try_into().ok()
    }

    /// The index key, if this is the master key the header was written with.
    fn open_header(&self, header: &Header, dir: &Path) -> Result<[u8; KEY_BYTES], KeyError> {
        if !equal_constant_time(&self.check, &header.check) {
            return Err(KeyError::WrongMasterKey {
                dir: dir.to_path_buf(),
            });
        }
        self.unwrap(INDEX_KEY_AD, &header.index_nonce, &header.index_wrapped)
            .ok_or_else(|| {
                KeyError::Corrupt(format!(
                    "{}: the master check matches but the index key does not unwrap",
                    dir.join(HEADER_FILE).display()
                ))
            })
    }

    fn encode_header(&self, index_key: &[u8; KEY_BYTES]) -> Result<Vec<u8>, KeyError> {
        let (nonce, wrapped) = self.wrap(INDEX_KEY_AD, index_key)?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES);
        bytes.extend_from_slice(HEADER_MAGIC);
        bytes.extend_from_slice(&self.check);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&wrapped);
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        Ok(bytes)
    }
}

/// A parsed `header` file.
struct Header {
    check: [u8; 32],
    index_nonce: [u8; NONCE_BYTES],
    index_wrapped: [u8; WRAPPED_BYTES],
}

/// The header at `path`, `None` if there is no such file.
fn read_header(path: &Path) -> Result<Option<Header>, KeyError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_at(path)(error)),
    };
    let corrupt = |what: &str| KeyError::Corrupt(format!("{}: {what}", path.display()));
    if bytes.len() != HEADER_BYTES {
        return Err(corrupt(&format!(
            "{} bytes, a key store header has {HEADER_BYTES}",
            bytes.len()
        )));
    }
    if !bytes.starts_with(HEADER_MAGIC) {
        return Err(corrupt("not a rapport key store header (bad magic)"));
    }
    let (body, sum) = bytes.split_at(HEADER_BYTES - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let rest = &body[HEADER_MAGIC.len()..];
    let (check, rest) = rest.split_at(32);
    let (nonce, wrapped) = rest.split_at(NONCE_BYTES);
    Ok(Some(Header {
        check: check.try_into().expect("32 bytes"),
        index_nonce: nonce.try_into().expect("nonce bytes"),
        index_wrapped: wrapped.try_into().expect("wrapped bytes"),
    }))
}

/// The header whose master key is in force: a committed rotation's until it is moved
/// into place (see the module documentation).
fn header_in_force(dir: &Path) -> Result<Option<Header>, KeyError> {
    if let Some(header) = read_header(&dir.join(READY_DIR).join(HEADER_FILE))? {
        return Ok(Some(header));
    }
    read_header(&dir.join(HEADER_FILE))
}

/// Writes `bytes` as `dir/name` atomically: a temporary file, synced, renamed over,
/// and the directory synced. A crash leaves the old file or the new one.
fn write_replacing(dir: &Path, name: &str, bytes: &[u8]) -> Result<File, KeyError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let target = dir.join(name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_at(&tmp)(error)),
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    file.write_all(bytes).map_err(io_at(&tmp))?;
    file.sync_all().map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io_at(&target))?;
    sync_dir(dir)?;
    Ok(file)
}

/// One record of a shard file.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Key {
        customer: Uuid,
        nonce: [u8; NONCE_BYTES],
        wrapped: [u8; WRAPPED_BYTES],
    },
    Tombstone(Uuid),
}

/// A frame: magic, body length, records, and a checksum over all of it. Each append is
/// one frame written with one `write`, so a crash tears at most the last frame.
fn encode_frame(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a shard frame is far below 4 GiB");
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + body.len() + FRAME_SUM_BYTES);
    frame.push(FRAME_MAGIC);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    let sum = blake3::hash(&frame);
    frame.extend_from_slice(&sum.as_bytes()[..FRAME_SUM_BYTES]);
    frame
}

fn push_key_record(
    body: &mut Vec<u8>,
    customer: Uuid,
    nonce: &[u8; NONCE_BYTES],
    wrapped: &[u8; WRAPPED_BYTES],
) {
    body.push(RECORD_KEY);
    body.extend_from_slice(customer.as_bytes());
    body.extend_from_slice(nonce);
    body.extend_from_slice(wrapped);
}

fn push_tombstone(body: &mut Vec<u8>, customer: Uuid) {
    body.push(RECORD_TOMBSTONE);
    body.extend_from_slice(customer.as_bytes());
}

/// The records of a shard file and the length of its intact part. An incomplete or
/// damaged frame that runs to the end of the file (or zeros to the end) is a torn append
/// from a crash and ends the intact part; a damaged frame with data after it is
/// corruption: acknowledged keys would be lost by skipping it.
fn parse_shard(bytes: &[u8], path: &Path) -> Result<(Vec<Record>, usize), KeyError> {
    let corrupt = |at: usize, what: &str| {
        KeyError::Corrupt(format!("{} at byte {at}: {what}", path.display()))
    };
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER_BYTES {
            return Ok((records, at));
        }
        let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        if rest[0] != FRAME_MAGIC || len == 0 {
            // A file system may extend the file before the data lands: zeros at the end.
            if rest.iter().all(|&b| b == 0) {
                return Ok((records, at));
            }
            return Err(corrupt(at, "not a record frame, with data after it"));
        }
        let total = FRAME_HEADER_BYTES + len + FRAME_SUM_BYTES;
        if total > rest.len() {
            return Ok((records, at));
        }
        let (framed, sum) = rest[..total].split_at(total - FRAME_SUM_BYTES);
        if &blake3::hash(framed).as_bytes()[..FRAME_SUM_BYTES] != sum {
            if total == rest.len() {
                return Ok((records, at));
            }
            return Err(corrupt(at, "checksum mismatch, with data after it"));
        }
        parse_body(&framed[FRAME_HEADER_BYTES..], &mut records)
            .map_err(|what| corrupt(at, &what))?;
        at += total;
    }
    Ok((records, at))
}

/// The records of one intact frame body. Errors here are format errors, not tears: the
/// checksum matched.
fn parse_body(mut body: &[u8], records: &mut Vec<Record>) -> Result<(), String> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if body.len() < n {
            return Err("record cut short inside an intact frame".into());
        }
        let (head, rest) = body.split_at(n);
        *body = rest;
        Ok(head)
    }
    while let Some((&tag, rest)) = body.split_first() {
        body = rest;
        let customer = Uuid::from_slice(take(&mut body, UUID_BYTES)?).expect("16 bytes");
        match tag {
            RECORD_KEY => {
                let nonce = take(&mut body, NONCE_BYTES)?.try_into().expect("nonce");
                let wrapped = take(&mut body, WRAPPED_BYTES)?.try_into().expect("wrapped");
                records.push(Record::Key {
                    customer,
                    nonce,
                    wrapped,
                });
            }
            RECORD_TOMBSTONE => records.push(Record::Tombstone(customer)),
            other => return Err(format!("unknown record type {other:#04x}")),
        }
    }
    Ok(())
}

fn shard_index(customer: Uuid) -> usize {
    usize::from(customer.as_bytes()[0])
}

fn shard_name(index: usize) -> String {
    format!("shard-{index:02x}")
}

/// The shard index of a file name `shard-XX`, `None` for any other name.
fn parse_shard_name(name: &str) -> Option<usize> {
    let hex = name.strip_prefix("shard-")?;
    if hex.len() != 2 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    usize::from_str_radix(hex, 16).ok()
}

/// What one shard holds in memory.
#[derive(Default)]
struct ShardState {
    keys: HashMap<Uuid, DataKey>,
    erased: HashSet<Uuid>,
}

/// The shard's file, as far as writers are concerned.
enum ShardFile {
    /// Not created yet (no key ever fell into this shard).
    Absent,
    /// The append handle.
    Open(File),
    /// A write or sync failed: what is on disk is unknown (after a failed fsync the
    /// kernel may have dropped the pages), so the shard takes no more writes until the
    /// store is reopened and reads the file again.
    Failed(String),
}

struct Shard {
    /// Live keys and tombstones; readers hold it only for a lookup, never across I/O.
    state: RwLock<ShardState>,
    /// Held across a write and its sync, so appends and rewrites of one shard never
    /// interleave, and a key is in `state` only once it is durable.
    file: Mutex<ShardFile>,
}

/// Every customer's data key and the erasure tombstones, held in memory and stored in
/// `DATA_DIR/keys/` (see the [module documentation](super)). `Send + Sync`; share it as
/// `Arc<KeyStore>`. One store per data directory: it holds an exclusive lock.
pub struct KeyStore {
    dir: PathBuf,
    wrapping: Wrapping,
    index_key: [u8; KEY_BYTES],
    shards: Vec<Shard>,
    /// Keeps the lock on `keys/lock` for the store's lifetime.
    _lock: File,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (live, erased) = self.counts();
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("live", &live)
            .field("erased", &erased)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Whether `data_dir` has a key store (its header exists, or a committed rotation's).
    pub fn exists(data_dir: &Path) -> bool {
        let dir = data_dir.join(KEYS_DIR);
        dir.join(HEADER_FILE).exists() || dir.join(READY_DIR).join(HEADER_FILE).exists()
    }

    /// Opens the key store in `DATA_DIR/keys/`, creating it on first use (a master check
    /// and a random index key wrapped by the master key).
    ///
    /// A master key other than the store's gives [`KeyError::WrongMasterKey`], checked
    /// before anything on disk is created or changed. Then, under the lock: a rotation
    /// interrupted by a crash is finished (committed) or dropped (not committed), files
    /// left by an interrupted rewrite are removed, a torn last append is cut off, and all
    /// keys are read into memory.
    pub fn open(data_dir: &Path, master: &MasterKey) -> Result<Self, KeyError> {
        let dir = data_dir.join(KEYS_DIR);
        let wrapping = Wrapping::new(master);
        if let Some(header) = header_in_force(&dir)? {
            wrapping.open_header(&header, &dir)?;
        }

        let created = !dir.exists();
        std::fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_at(&dir))?;
        if created {
            sync_dir(data_dir)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        lock.try_lock().map_err(|error| match error {
            std::fs::TryLockError::WouldBlock => KeyError::Locked(dir.clone()),
            std::fs::TryLockError::Error(error) => io_at(&lock_path)(error),
        })?;

        // Under the lock: check again (another process may have rotated meanwhile).
        let index_key = match header_in_force(&dir)? {
            Some(header) => {
                let index_key = wrapping.open_header(&header, &dir)?;
                finish_rotation(&dir)?;
                index_key
            }
            None => create_header(&dir, &wrapping)?,
        };
        drop_staging(&dir)?;

        let mut shards: Vec<Shard> = (0..SHARDS)
            .map(|_| Shard {
                state: RwLock::new(ShardState::default()),
                file: Mutex::new(ShardFile::Absent),
            })
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(TMP_SUFFIX) {
                // A rewrite that crashed before its rename; the original is intact.
                if parse_shard_name(stem).is_some() || stem == HEADER_FILE {
                    std::fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
                }
                continue;
            }
            if let Some(index) = parse_shard_name(name) {
                let (state, file) = load_shard(&entry.path(), index, &wrapping)?;
                shards[index] = Shard {
                    state: RwLock::new(state),
                    file: Mutex::new(ShardFile::Open(file)),
                };
            }
        }
        Ok(Self {
            dir,
            wrapping,
            index_key,
            shards,
            _lock: lock,
        })
    }

    /// The customer's key, if one was created and not erased.
    pub fn data_key(&self, customer: Uuid) -> Option<DataKey> {
        self.read(shard_index(customer))
            .keys
            .get(&customer)
            .cloned()
    }

    /// Whether the customer was erased.
    pub fn is_erased(&self, customer: Uuid) -> bool {
        self.read(shard_index(customer)).erased.contains(&customer)
    }

    /// The keys of `customers`, in order, creating missing ones durably: they are
    /// written and fdatasynced before this returns, because callers seal events with
    /// them and those events are durable right after. New keys of one shard are one
    /// append and one fdatasync, so a call costs one fdatasync per shard it creates keys
    /// in (one for a call about one customer), plus a directory sync the first time a
    /// shard file is created. Concurrent calls are fine; two asking for the same new
    /// customer get the same key.
    ///
    /// An erased customer gives [`KeyError::Erased`]: a key is never re-created after
    /// erasure. Keys created for other customers of the call before that was noticed
    /// stay (unused keys are harmless).
    pub fn ensure(&self, customers: &[Uuid]) -> Result<Vec<DataKey>, KeyError> {
        let mut found: HashMap<Uuid, DataKey> = HashMap::with_capacity(customers.len());
        let mut missing: BTreeMap<usize, BTreeSet<Uuid>> = BTreeMap::new();
        for &customer in customers {
            let index = shard_index(customer);
            let state = self.read(index);
            if state.erased.contains(&customer) {
                return Err(KeyError::Erased(customer));
            }
            match state.keys.get(&customer) {
                Some(key) => {
                    found.insert(customer, key.clone());
                }
                None => {
                    missing.entry(index).or_default().insert(customer);
                }
            }
        }
        for (index, ids) in missing {
            found.extend(self.create_keys(index, &ids)?);
        }
        Ok(customers
            .iter()
            .map(|customer| found[customer].clone())
            .collect())
    }

    /// Creates the keys of `ids` (all in shard `index`) that still do not exist.
    fn create_keys(
        &self,
        index: usize,
        ids: &BTreeSet<Uuid>,
    ) -> Result<HashMap<Uuid, DataKey>, KeyError> {
        let shard = &self.shards[index];
        let mut file = shard.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = HashMap::with_capacity(ids.len());
        let mut body = Vec::new();
        {
            // Again under the file lock: a concurrent call may have created or erased them.
            let state = self.read(index);
            for &customer in ids {
                if state.erased.contains(&customer) {
                    return Err(KeyError::Erased(customer));
                }
                if let Some(key) = state.keys.get(&customer) {
                    keys.insert(customer, key.clone());
                    continue;
                }
                let bytes = random_bytes::<KEY_BYTES>()?;
                let (nonce, wrapped) = self.wrapping.wrap(customer.as_bytes(), &bytes)?;
                push_key_record(&mut body, customer, &nonce, &wrapped);
                keys.insert(customer, DataKey::from_bytes(bytes));
            }
        }
        if body.is_empty() {
            return Ok(keys);
        }
        self.append(index, &mut file, &encode_frame(&body))?;
        let mut state = self.write(index);
        for (customer, key) in &keys {
            state.keys.insert(*customer, key.clone());
        }
        Ok(keys)
    }

    /// Appends one frame to shard `index` and fdatasyncs it (creating the file first if
    /// need be). A failure leaves the shard refusing writes (see [`ShardFile::Failed`]).
    fn append(&self, index: usize, file: &mut ShardFile, frame: &[u8]) -> Result<(), KeyError> {
        let path = self.dir.join(shard_name(index));
        let result = (|| {
            match file {
                ShardFile::Failed(reason) => {
                    return Err(KeyError::Io(std::io::Error::other(format!(
                        "{}: takes no writes after an earlier failure ({reason}); restart to recover",
                        path.display()
                    ))));
                }
                ShardFile::Absent => {
                    let mut new = OpenOptions::new()
                        .append(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(io_at(&path))?;
                    new.write_all(frame).map_err(io_at(&path))?;
                    new.sync_data().map_err(io_at(&path))?;
                    sync_dir(&self.dir)?;
                    *file = ShardFile::Open(new);
                }
                ShardFile::Open(handle) => {
                    handle.write_all(frame).map_err(io_at(&path))?;
                    handle.sync_data().map_err(io_at(&path))?;
                }
            }
            Ok(())
        })();
        if let Err(error) = &result
            && !matches!(file, ShardFile::Failed(_))
        {
            *file = ShardFile::Failed(error.to_string());
        }
        result
    }

    /// Erases `customers`: their keys are deleted physically and durably, and their ids
    /// remembered as erased (tombstones; ids are not personal data). Each affected shard
    /// is rewritten without the keys (`shard-XX.tmp`, fsync, rename over, directory
    /// fsync), so once this returns no file of the key store holds the wrapped keys.
    /// Idempotent; erasing a customer who never had a key still records the tombstone,
    /// so no key is ever made for them.
    pub fn erase(&self, customers: &[Uuid]) -> Result<(), KeyError> {
        let mut by_shard: BTreeMap<usize, BTreeSet<Uuid>> = BTreeMap::new();
        for &customer in customers {
            by_shard
                .entry(shard_index(customer))
                .or_default()
                .insert(customer);
        }
        for (index, ids) in by_shard {
            self.erase_in_shard(index, &ids)?;
        }
        Ok(())
    }

    fn erase_in_shard(&self, index: usize, ids: &BTreeSet<Uuid>) -> Result<(), KeyError> {
        let shard = &self.shards[index];
        let mut file = shard.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let ShardFile::Failed(reason) = &*file {
            return Err(KeyError::Io(std::io::Error::other(format!(
                "{}: takes no writes after an earlier failure ({reason}); restart to recover",
                self.dir.join(shard_name(index)).display()
            ))));
        }
        let body = {
            let state = self.read(index);
            if ids
                .iter()
                .all(|id| state.erased.contains(id) && !state.keys.contains_key(id))
            {
                return Ok(());
            }
            let keys = state.keys.iter().filter(|(id, _)| !ids.contains(id));
            let erased: BTreeSet<&Uuid> = state.erased.iter().chain(ids).collect();
            self.encode_shard(&self.wrapping, keys, erased)?
        };
        // After a failure the handle may point at the replaced (unlinked) file, or the
        // rename may not be durable: the shard takes no more writes until reopened.
        match write_replacing(&self.dir, &shard_name(index), &encode_frame(&body)) {
            Ok(new) => *file = ShardFile::Open(new),
            Err(error) => {
                *file = ShardFile::Failed(error.to_string());
                return Err(error);
            }
        }
        let mut state = self.write(index);
        for id in ids {
            state.keys.remove(id);
            state.erased.insert(*id);
        }
        Ok(())
    }

    /// The body of a whole shard: its keys wrapped afresh by `wrapping`, then tombstones.
    fn encode_shard<'a>(
        &self,
        wrapping: &Wrapping,
        keys: impl Iterator<Item = (&'a Uuid, &'a DataKey)>,
        erased: impl IntoIterator<Item = &'a Uuid>,
    ) -> Result<Vec<u8>, KeyError> {
        let mut body = Vec::new();
        for (customer, key) in keys {
            let (nonce, wrapped) = wrapping.wrap(customer.as_bytes(), &key.bytes)?;
            push_key_record(&mut body, *customer, &nonce, &wrapped);
        }
        for customer in erased {
            push_tombstone(&mut body, *customer);
        }
        Ok(body)
    }

    /// A lookup token: keyed BLAKE3 (under the index key) of the kind's tag and the
    /// normalised value, cut to 16 bytes (collisions need ~2^64 values). It goes into
    /// stream names, and reveals nothing about the value without the index key.
    pub fn lookup_token(&self, kind: LookupKind, normalised: &str) -> [u8; 16] {
        let mut hasher = blake3::Hasher::new_keyed(&self.index_key);
        hasher.update(&[kind.tag()]);
        hasher.update(normalised.as_bytes());
        hasher.finalize().as_bytes()[..16]
            .try_into()
            .expect("16 bytes")
    }

    /// Live keys and tombstones.
    pub fn counts(&self) -> (usize, usize) {
        (0..SHARDS)
            .map(|index| {
                let state = self.read(index);
                (state.keys.len(), state.erased.len())
            })
            .fold((0, 0), |(k, e), (k1, e1)| (k + k1, e + e1))
    }

    /// The shard's state for reading. Every update is one map operation, so a panic
    /// elsewhere cannot leave it half-changed: poisoning is ignored.
    fn read(&self, index: usize) -> std::sync::RwLockReadGuard<'_, ShardState> {
        self.shards[index]
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, index: usize) -> std::sync::RwLockWriteGuard<'_, ShardState> {
        self.shards[index]
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the whole store re-wrapped under `new` into `keys/rotate.tmp/`, synced.
    /// Nothing in force changes: a crash here leaves the old wrapping.
    fn stage_rotation(&self, new: &MasterKey) -> Result<PathBuf, KeyError> {
        drop_staging(&self.dir)?;
        let staging = self.dir.join(STAGING_DIR);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io_at(&staging))?;
        let wrapping = Wrapping::new(new);
        for index in 0..SHARDS {
            let file = self.shards[index]
                .file
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if matches!(*file, ShardFile::Absent) {
                continue;
            }
            let body = {
                let state = self.read(index);
                self.encode_shard(&wrapping, state.keys.iter(), &state.erased)?
            };
            write_new(&staging.join(shard_name(index)), &encode_frame(&body))?;
        }
        write_new(
            &staging.join(HEADER_FILE),
            &wrapping.encode_header(&self.index_key)?,
        )?;
        sync_dir(&staging)?;
        Ok(staging)
    }
}

/// Writes a new file and syncs it (its directory is synced by the caller).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all(bytes).map_err(io_at(path))?;
    file.sync_all().map_err(io_at(path))
}

/// Creates the header of a new store: a random index key wrapped by the master key.
/// Refuses if shard files exist without a header: their keys would be unreadable, and
/// a new header would hide that.
fn create_header(dir: &Path, wrapping: &Wrapping) -> Result<[u8; KEY_BYTES], KeyError> {
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if parse_shard_name(&name).is_some() || name == READY_DIR {
            return Err(KeyError::Corrupt(format!(
                "{} holds {name} but no {HEADER_FILE}: the master check is missing",
                dir.display()
            )));
        }
    }
    let index_key = random_bytes::<KEY_BYTES>()?;
    write_replacing(dir, HEADER_FILE, &wrapping.encode_header(&index_key)?)?;
    Ok(index_key)
}

/// Drops a rotation that was being written when the process stopped (not committed).
fn drop_staging(dir: &Path) -> Result<(), KeyError> {
    let staging = dir.join(STAGING_DIR);
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => sync_dir(dir),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_at(&staging)(error)),
    }
}

/// Commits a staged rotation: after this rename the new wrapping is in force.
fn commit_rotation(dir: &Path) -> Result<(), KeyError> {
    let ready = dir.join(READY_DIR);
    std::fs::rename(dir.join(STAGING_DIR), &ready).map_err(io_at(&ready))?;
    sync_dir(dir)
}

/// Moves a committed rotation's files into place, each by one atomic rename. Safe to
/// repeat after a crash at any point: what is still in `rotate-ready/` is newer than
/// what it replaces.
fn finish_rotation(dir: &Path) -> Result<(), KeyError> {
    let ready = dir.join(READY_DIR);
    let entries = match std::fs::read_dir(&ready) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_at(&ready)(error)),
    };
    let mut names: Vec<_> = entries
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_at(&ready))?;
    // The header last: until it moves, `rotate-ready/header` says the rotation is on.
    names.sort_by_key(|name| name == HEADER_FILE);
    for name in names {
        let target = dir.join(&name);
        std::fs::rename(ready.join(&name), &target).map_err(io_at(&target))?;
    }
    sync_dir(dir)?;
    std::fs::remove_dir(&ready).map_err(io_at(&ready))?;
    sync_dir(dir)
}

/// Reads one shard file into memory, cutting off a torn last append, and returns the
/// append handle.
fn load_shard(
    path: &Path,
    index: usize,
    wrapping: &Wrapping,
) -> Result<(ShardState, File), KeyError> {
    let bytes = std::fs::read(path).map_err(io_at(path))?;
    let (records, intact) = parse_shard(&bytes, path)?;
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_at(path))?;
    if intact < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = bytes.len() - intact,
            "cutting off a torn key append (a crash before it was acknowledged)"
        );
        file.set_len(intact as u64).map_err(io_at(path))?;
        file.sync_all().map_err(io_at(path))?;
    }
    let corrupt = |what: String| KeyError::Corrupt(format!("{}: {what}", path.display()));
    let mut state = ShardState::default();
    for record in records {
        match record {
            Record::Key {
                customer,
                nonce,
                wrapped,
            } => {
                if shard_index(customer) != index {
                    return Err(corrupt(format!("key of {customer} in the wrong shard")));
                }
                if state.erased.contains(&customer) {
                    return Err(corrupt(format!("key of erased customer {customer}")));
                }
                let key = wrapping
                    .unwrap(customer.as_bytes(), &nonce, &wrapped)
                    .ok_or_else(|| corrupt(format!("key of {customer} does not unwrap")))?;
                let key = DataKey::from_bytes(key);
                if let Some(earlier) = state.keys.insert(customer, key.clone())
                    && earlier != key
                {
                    return Err(corrupt(format!("two different keys for {customer}")));
                }
            }
            Record::Tombstone(customer) => {
                if shard_index(customer) != index {
                    return Err(corrupt(format!(
                        "tombstone of {customer} in the wrong shard"
                    )));
                }
                state.keys.remove(&customer);
                state.erased.insert(customer);
            }
        }
    }
    Ok((state, file))
}

/// Offline master-key rotation: re-wraps every data key and the index key under `new`
/// without touching any event (data keys do not change). Crash-safe: after a crash at
/// any point either the old or the new wrapping is in force, and [`KeyStore::open`]
/// finishes a committed rotation or drops an uncommitted one. [`KeyError::WrongMasterKey`]
/// if `old` is not the current key; [`KeyError::Locked`] while a server has the store.
pub fn rotate_master_key(
    data_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<(), KeyError> {
    let store = KeyStore::open(data_dir, old)?;
    store.stage_rotation(new)?;
    commit_rotation(&store.dir)?;
    finish_rotation(&store.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A customer id whose key falls in shard `first`.
    fn customer_in(first: u8) -> Uuid {
        let mut bytes = *Uuid::new_v4().as_bytes();
        bytes[0] = first;
        Uuid::from_bytes(bytes)
    }

    /// Every file under `dir` (relative path → bytes), to compare before and after.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(at) = todo.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path.clone());
                    files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), Vec::new());
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
                }
            }
        }
        files
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    fn shard_path(data: &Path, customer: Uuid) -> PathBuf {
        data.join(KEYS_DIR).join(shard_name(shard_index(customer)))
    }

    /// The stored (wrapped) key record bytes of `customer`, read from its shard file.
    fn wrapped_on_disk(data: &Path, customer: Uuid) -> ([u8; NONCE_BYTES], [u8; WRAPPED_BYTES]) {
        let path = shard_path(data, customer);
        let (records, _) = parse_shard(&std::fs::read(&path).unwrap(), &path).unwrap();
        records
            .into_iter()
            .find_map(|record| match record {
                Record::Key {
                    customer: c,
                    nonce,
                    wrapped,
                } if c == customer => Some((nonce, wrapped)),
                _ => None,
            })
            .expect("a key record")
    }

    #[test]
    fn ensure_creates_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let (a, b, c) = (customer_in(7), customer_in(7), customer_in(200));
        let store = KeyStore::open(dir.path(), &master).unwrap();
        assert_eq!(store.data_key(a), None);
        let keys = store.ensure(&[a, b, a, c]).unwrap();
        assert_eq!(keys.len(), 4);
        assert_eq!(
            keys[0], keys[2],
            "one key per customer, however often named"
        );
        assert_ne!(keys[0], keys[1]);
        assert_eq!(store.ensure(&[b]).unwrap()[0], keys[1], "not re-created");
        assert_eq!(store.data_key(c).as_ref(), Some(&keys[3]));
        assert_eq!(store.counts(), (3, 0));
        let sealed = keys[0].seal(b"name", b"Ann Lee");
        assert!(matches!(
            KeyStore::open(dir.path(), &master),
            Err(KeyError::Locked(_))
        ));
        assert!(matches!(
            rotate_master_key(dir.path(), &master, &MasterKey::generate()),
            Err(KeyError::Locked(_))
        ));
        drop(store);

        let store = KeyStore::open(dir.path(), &master).unwrap();
        assert_eq!(store.counts(), (3, 0));
        for (customer, key) in [a, b, a, c].iter().zip(&keys) {
            assert_eq!(store.data_key(*customer).as_ref(), Some(key));
        }
        assert_eq!(
            store.data_key(a).unwrap().open(b"name", &sealed).unwrap(),
            b"Ann Lee"
        );
        // One append (frame) per shard and call: two frames in shard 7 after this.
        let d = customer_in(7);
        store.ensure(&[d]).unwrap();
        let path = shard_path(dir.path(), d);
        let (records, intact) = parse_shard(&std::fs::read(&path).unwrap(), &path).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(intact as u64, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn key_store_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<KeyStore>();
        shareable::<DataKey>();
    }

    #[test]
    fn concurrent_ensure_gives_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(KeyStore::open(dir.path(), &MasterKey::generate()).unwrap());
        let customers: Vec<Uuid> = (0..8).map(|i| customer_in(i % 2)).collect();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let customers = customers.clone();
                std::thread::spawn(move || store.ensure(&customers).unwrap())
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(store.counts(), (8, 0));
    }

    #[test]
    fn erase_deletes_the_key_physically_and_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let store = KeyStore::open(dir.path(), &master).unwrap();
        let gone = customer_in(0x42);
        let neighbour = customer_in(0x42);
        let elsewhere = customer_in(0x43);
        let keys = store.ensure(&[gone, neighbour, elsewhere]).unwrap();
        let (nonce, wrapped) = wrapped_on_disk(dir.path(), gone);
        let all_before = snapshot(dir.path());
        assert!(all_before.values().any(|bytes| contains(bytes, &wrapped)));

        store.erase(&[gone]).unwrap();
        assert_eq!(store.data_key(gone), None);
        assert!(store.is_erased(gone));
        assert!(
            matches!(store.ensure(&[neighbour, gone]), Err(KeyError::Erased(id)) if id == gone)
        );
        assert_eq!(store.counts(), (2, 1));
        for (path, bytes) in snapshot(dir.path()) {
            for needle in [&wrapped[..], &nonce[..], &keys[0].bytes[..]] {
                assert!(
                    !contains(&bytes, needle),
                    "{} still holds key bytes",
                    path.display()
                );
            }
        }
        // The neighbour in the rewritten shard keeps its key.
        assert_eq!(store.data_key(neighbour).as_ref(), Some(&keys[1]));
        store.erase(&[gone]).unwrap();
        store.erase(&[gone, gone]).unwrap();
        assert_eq!(store.counts(), (2, 1));
        // Erasing someone who never had a key still stops a key being made later.
        let never = customer_in(0x99);
        store.erase(&[never]).unwrap();
        assert!(matches!(store.ensure(&[never]), Err(KeyError::Erased(_))));
        // Appends after a rewrite go to the new file.
        let later = customer_in(0x42);
        let later_key = store.ensure(&[later]).unwrap().remove(0);
        drop(store);

        let store = KeyStore::open(dir.path(), &master).unwrap();
        assert_eq!(store.counts(), (3, 2));
        assert!(store.is_erased(gone) && store.is_erased(never));
        assert_eq!(store.data_key(gone), None);
        assert!(matches!(store.ensure(&[gone]), Err(KeyError::Erased(_))));
        assert_eq!(store.data_key(later), Some(later_key));
        assert_eq!(store.data_key(neighbour).as_ref(), Some(&keys[1]));
        assert_eq!(store.data_key(elsewhere).as_ref(), Some(&keys[2]));
    }

    #[test]
    fn wrong_master_key_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let store = KeyStore::open(dir.path(), &master).unwrap();
        store.ensure(&[customer_in(1), customer_in(2)]).unwrap();
        store.erase(&[customer_in(3)]).unwrap();
        drop(store);
        let before = snapshot(dir.path());
        let wrong = MasterKey::generate();
        let error = KeyStore::open(dir.path(), &wrong).unwrap_err();
        assert!(matches!(error, KeyError::WrongMasterKey { .. }), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
        assert_eq!(snapshot(dir.path()), before);
        assert!(matches!(
            rotate_master_key(dir.path(), &wrong, &MasterKey::generate()),
            Err(KeyError::WrongMasterKey { .. })
        ));
        assert_eq!(snapshot(dir.path()), before);
        KeyStore::open(dir.path(), &master).unwrap();
    }

    #[test]
    fn lookup_tokens_are_keyed_stable_and_kind_separated() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let store = KeyStore::open(dir.path(), &master).unwrap();
        let token = store.lookup_token(LookupKind::Email, "ann@example.com");
        assert_eq!(
            token,
            store.lookup_token(LookupKind::Email, "ann@example.com")
        );
        assert_ne!(
            token,
            store.lookup_token(LookupKind::Email, "ann@example.org")
        );
        assert_ne!(
            token,
            store.lookup_token(LookupKind::ExternalId, "ann@example.com")
        );
        let unkeyed = blake3::hash(b"\x01ann@example.com");
        assert_ne!(token[..], unkeyed.as_bytes()[..16]);
        drop(store);
        let store = KeyStore::open(dir.path(), &master).unwrap();
        assert_eq!(
            token,
            store.lookup_token(LookupKind::Email, "ann@example.com")
        );
        let other = tempfile::tempdir().unwrap();
        let other = KeyStore::open(other.path(), &master).unwrap();
        assert_ne!(
            token,
            other.lookup_token(LookupKind::Email, "ann@example.com"),
            "each store has its own random index key"
        );
    }

    #[test]
    fn torn_tail_is_cut_off_and_damage_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        let first = customer_in(9);
        let key = KeyStore::open(dir.path(), &master)
            .unwrap()
            .ensure(&[first])
            .unwrap()
            .remove(0);
        let path = shard_path(dir.path(), first);
        let intact = std::fs::read(&path).unwrap();
        // A second append, torn at every length, or zero-filled by the file system.
        let mut body = Vec::new();
        push_key_record(
            &mut body,
            customer_in(9),
            &[1; NONCE_BYTES],
            &[2; WRAPPED_BYTES],
        );
        let frame = encode_frame(&body);
        let mut tails: Vec<Vec<u8>> = (1..frame.len()).map(|n| frame[..n].to_vec()).collect();
        tails.push(vec![0; frame.len()]);
        let mut bad_sum = frame.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        tails.push(bad_sum.clone());
        for tail in tails {
            std::fs::write(&path, [&intact[..], &tail[..]].concat()).unwrap();
            let store = KeyStore::open(dir.path(), &master).unwrap();
            assert_eq!(store.counts(), (1, 0));
            assert_eq!(store.data_key(first).as_ref(), Some(&key));
            assert_eq!(std::fs::read(&path).unwrap(), intact, "tail cut off");
        }
        // After a cut, appends continue cleanly.
        let torn = [&intact[..], &frame[..10]].concat();
        std::fs::write(&path, &torn).unwrap();
        let second = customer_in(9);
        let store = KeyStore::open(dir.path(), &master).unwrap();
        let second_key = store.ensure(&[second]).unwrap().remove(0);
        drop(store);
        let store = KeyStore::open(dir.path(), &master).unwrap();
        assert_eq!(store.data_key(second), Some(second_key));
        drop(store);

        // A damaged frame with an intact one after it: acknowledged keys would be lost.
        let whole = std::fs::read(&path).unwrap();
        let mut damaged = whole.clone();
        damaged[FRAME_HEADER_BYTES + 3] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), &master),
            Err(KeyError::Corrupt(_))
        ));
        let mut garbage = whole.clone();
        garbage.extend_from_slice(&bad_sum);
        garbage.extend_from_slice(&frame);
        std::fs::write(&path, &garbage).unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), &master),
            Err(KeyError::Corrupt(_))
        ));
    }

    #[test]
    fn shards_without_a_header_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate();
        KeyStore::open(dir.path(), &master)
            .unwrap()
            .ensure(&[customer_in(5)])
            .unwrap();
        std::fs::remove_file(dir.path().join(KEYS_DIR).join(HEADER_FILE)).unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), &master),
            Err(KeyError::Corrupt(_))
        ));
    }

    /// A store with live keys, an erasure, and a sealed value per live key.
    fn populated(data: &Path, master: &MasterKey) -> Vec<(Uuid, Vec<u8>)> {
        let store = KeyStore::open(data, master).unwrap();
        let customers: Vec<Uuid> = (0..20).map(|i| customer_in(i * 13)).collect();
        let keys = store.ensure(&customers).unwrap();
        store.erase(&[customers[0]]).unwrap();
        customers
            .iter()
            .zip(keys)
            .skip(1)
            .map(|(customer, key)| (*customer, key.seal(customer.as_bytes(), b"Ann Lee")))
            .collect()
    }

    fn assert_same_keys(store: &KeyStore, sealed: &[(Uuid, Vec<u8>)], token: [u8; 16]) {
        assert_eq!(store.counts(), (sealed.len(), 1));
        for (customer, value) in sealed {
            let key = store.data_key(*customer).unwrap();
            assert_eq!(key.open(customer.as_bytes(), value).unwrap(), b"Ann Lee");
        }
        assert_eq!(store.lookup_token(LookupKind::Phone, "+15550100"), token);
    }

    fn token(data: &Path, master: &MasterKey) -> [u8; 16] {
        KeyStore::open(data, master)
            .unwrap()
            .lookup_token(LookupKind::Phone, "+15550100")
    }

    #[test]
    fn rotation_rewraps_everything_and_keeps_data_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let sealed = populated(dir.path(), &old);
        let token = token(dir.path(), &old);
        let before = snapshot(dir.path());
        rotate_master_key(dir.path(), &old, &new).unwrap();
        assert!(matches!(
            KeyStore::open(dir.path(), &old),
            Err(KeyError::WrongMasterKey { .. })
        ));
        let store = KeyStore::open(dir.path(), &new).unwrap();
        assert_same_keys(&store, &sealed, token);
        drop(store);
        let after = snapshot(dir.path());
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "no rotation directory left, no file missing"
        );
        for (path, bytes) in &after {
            if path.ends_with(LOCK_FILE) || dir.path().join(path).is_dir() {
                continue;
            }
            // A shard of tombstones only has nothing to re-wrap.
            let has_keys = parse_shard(&before[path], path).map_or(true, |(records, _)| {
                records.iter().any(|r| matches!(r, Record::Key { .. }))
            });
            if !has_keys {
                continue;
            }
            assert_ne!(&before[path], bytes, "{} re-wrapped", path.display());
        }
        // Rotating with the old key again is refused and changes nothing.
        assert!(matches!(
            rotate_master_key(dir.path(), &old, &new),
            Err(KeyError::WrongMasterKey { .. })
        ));
        assert_eq!(snapshot(dir.path()), after);
    }

    #[test]
    fn rotation_crash_before_commit_keeps_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let sealed = populated(dir.path(), &old);
        let token = token(dir.path(), &old);
        let store = KeyStore::open(dir.path(), &old).unwrap();
        store.stage_rotation(&new).unwrap();
        // Also a half-written staging file.
        std::fs::write(
            dir.path().join(KEYS_DIR).join(STAGING_DIR).join("shard-ff"),
            b"\xA7\x10",
        )
        .unwrap();
        drop(store);
        let staged = snapshot(dir.path());
        assert!(matches!(
            KeyStore::open(dir.path(), &new),
            Err(KeyError::WrongMasterKey { .. })
        ));
        assert_eq!(snapshot(dir.path()), staged);
        let store = KeyStore::open(dir.path(), &old).unwrap();
        assert_same_keys(&store, &sealed, token);
        assert!(
            !dir.path().join(KEYS_DIR).join(STAGING_DIR).exists(),
            "dropped"
        );
    }

    #[test]
    fn rotation_crash_after_commit_is_finished_by_open_with_the_new_key() {
        for moved_header in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (old, new) = (MasterKey::generate(), MasterKey::generate());
            let sealed = populated(dir.path(), &old);
            let token = token(dir.path(), &old);
            let store = KeyStore::open(dir.path(), &old).unwrap();
            store.stage_rotation(&new).unwrap();
            commit_rotation(&store.dir).unwrap();
            let keys = store.dir.clone();
            drop(store);
            // Part of the moves done: one shard, and (second round) the header too.
            let ready = keys.join(READY_DIR);
            let shard = std::fs::read_dir(&ready)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .find(|name| name != HEADER_FILE)
                .unwrap();
            std::fs::rename(ready.join(&shard), keys.join(&shard)).unwrap();
            if moved_header {
                std::fs::rename(ready.join(HEADER_FILE), keys.join(HEADER_FILE)).unwrap();
            }
            assert!(KeyStore::exists(dir.path()));
            let crashed = snapshot(dir.path());
            assert!(matches!(
                KeyStore::open(dir.path(), &old),
                Err(KeyError::WrongMasterKey { .. })
            ));
            assert_eq!(snapshot(dir.path()), crashed);
            let store = KeyStore::open(dir.path(), &new).unwrap();
            assert_same_keys(&store, &sealed, token);
            assert!(!ready.exists(), "rotation finished");
            drop(store);
            let store = KeyStore::open(dir.path(), &new).unwrap();
            assert_same_keys(&store, &sealed, token);
        }
    }
}
