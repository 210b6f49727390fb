//! Per-customer data keys, the master key that wraps them, and crypto-shredding
//! (DESIGN §3 "Personal data").
//!
//! Personal fields are sealed with the customer's random 32-byte [`DataKey`]
//! (XChaCha20-Poly1305); lookups use keyed hashes ([`KeyStore::lookup_token`]) of
//! normalised values. Erasing a customer deletes their key: the events stay and the hash
//! chain still verifies, but the sealed fields can never be opened again, in the log, in
//! every read model and in sled pages not compacted yet, all at once.
//!
//! # Physical deletion
//! Deleting a key only helps if its bytes are really gone. sled, like any log-structured
//! store, keeps an overwritten or removed value in segments it has not compacted yet, for
//! an unbounded time, so keys never live in sled. They live in 256 small shard files
//! `DATA_DIR/keys/shard-XX` (`XX` = first byte of the customer id in hex, created on
//! first use):
//! - a new key is *appended* to its shard and fdatasynced before [`KeyStore::ensure`]
//!   returns (one fdatasync per shard touched, so one for a typical call);
//! - [`KeyStore::erase`] *rewrites* each affected shard without the key and with a
//!   tombstone (`shard-XX.tmp`, fsync, rename over `shard-XX`, fsync the directory). After
//!   it returns no file of the key store holds the wrapped key; the old file's blocks are
//!   freed by the file system.
//!
//! Freed blocks are not overwritten, and SSDs and file-system journals keep copies we
//! cannot reach. That is why every stored data key is itself wrapped (encrypted) under the
//! [`MasterKey`], which lives outside the data directory: leftover blocks, like a copy of
//! the data directory, are useless without it. Backups of `DATA_DIR/keys` are the one
//! place erasure cannot reach: keep them short-lived.
//!
//! All live keys are held in memory (a `HashMap<Uuid, DataKey>`: 48 bytes of entry plus
//! hash-table overhead, about 60–110 bytes per customer depending on the table's fill;
//! ~1 GB for 10 million customers), so sealing and opening never touch the disk.
//!
//! # Files in `DATA_DIR/keys/` (integers little-endian)
//! ```text
//! header   = "RAPKEYS1" | check:[u8;32] | index_nonce:[u8;24] | index_wrapped:[u8;48]
//!            | checksum:[u8;32]                       (144 bytes, replaced atomically)
//!   check    = BLAKE3 derive_key("rapport 2026 master-key check", master)
//!   index_*  = XChaCha20-Poly1305 of the 32-byte index key under the wrapping key,
//!              AD = "rapport index key"
//!   checksum = BLAKE3 of the bytes before it
//! shard-XX = record*
//!   key record       = 0x01 | customer:[u8;16] | nonce:[u8;24] | wrapped:[u8;48] | sum:[u8;8]
//!   tombstone record = 0x02 | customer:[u8;16] | sum:[u8;8]
//!   wrapped = XChaCha20-Poly1305 of the data key under the wrapping key, random nonce,
//!             AD = customer id
//!   sum     = first 8 bytes of BLAKE3 of the record bytes before it
//! lock     = empty; holds an exclusive lock while a KeyStore is open
//! rotate.tmp/, rotate-ready/ = a master-key rotation being staged / committed
//! ```
//! The wrapping key is `derive_key("rapport 2026 data-key wrapping", master)`, so the
//! master key itself encrypts nothing. A record cut short or failing its sum at the end
//! of a shard is a torn append from a crash (never acknowledged) and is cut off; one in
//! the middle is corruption.
//!
//! # Master-key rotation
//! [`rotate_master_key`] writes a complete new `header` and new shards into `rotate.tmp/`,
//! fsyncs them, and renames the directory to `rotate-ready/`: that rename is the commit
//! point. It then moves each file over its old counterpart and removes the directory.
//! While `rotate-ready/` exists the new wrapping is in force (its `header`, or the
//! already moved one, is the master check), and [`KeyStore::open`] with the new key
//! finishes the moves; a `rotate.tmp/` left by a crash is dropped by the next open with
//! the old key. Events are not touched: data keys do not change.

mod error;
mod normalise;
mod store;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub use error::KeyError;
pub use normalise::{normalise_email, normalise_external_id, normalise_phone};
pub use store::{KeyStore, rotate_master_key};

use crate::limits::MASTER_KEY_FILE_BYTES_MAX;

/// Bytes of every key: master, data and index keys.
pub const KEY_BYTES: usize = 32;

/// Bytes of an XChaCha20-Poly1305 nonce.
const NONCE_BYTES: usize = 24;

/// Bytes of a Poly1305 tag.
const TAG_BYTES: usize = 16;

/// First byte of a sealed value: the format of [`DataKey::seal`].
const SEAL_VERSION: u8 = 1;

/// BLAKE3 `derive_key` context for the synthetic nonce of [`DataKey::seal`].
const NONCE_CONTEXT: &str = "rapport 2026 personal-data nonce";

/// Suffix of the default master key file name, see [`MasterKey::default_path`].
const DEFAULT_KEY_SUFFIX: &str = ".master-key";

/// `N` random bytes from the operating system.
fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    <[u8; N]>::try_generate().map_err(|error| KeyError::Random(error.to_string()))
}

/// Byte comparison whose time does not depend on where the inputs differ.
fn equal_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key that wraps every data key and the index key. It is kept outside the data
/// directory (a copy of the data directory alone reveals nothing). `Debug` does not show
/// the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    bytes: [u8; KEY_BYTES],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random key.
    ///
    /// # Panics
    /// If the operating system's random number generator fails (as `getrandom` itself
    /// would; a key store cannot work without it).
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes().expect("the system random number generator failed"))
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self { bytes }
    }

    /// The raw bytes, for the key store's derivations only.
    fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }

    /// Reads a key file: 64 hex characters, optionally surrounded by whitespace.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadKeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                KeyError::MissingKeyFile {
                    path: path.to_path_buf(),
                }
            } else {
                error::io_at(path)(error)
            }
        })?;
        warn_if_readable_by_others(&file, path);
        // Bounded read: a key file is 65 bytes; a huge file is a wrong path, not a key.
        let mut contents = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MASTER_KEY_FILE_BYTES_MAX as u64 + 1),
            &mut contents,
        )
        .map_err(error::io_at(path))?;
        if contents.len() > MASTER_KEY_FILE_BYTES_MAX {
            return Err(bad(format!(
                "longer than {MASTER_KEY_FILE_BYTES_MAX} bytes; a key file holds 64 hex characters"
            )));
        }
        let text = std::str::from_utf8(&contents)
            .map_err(|_| bad("not text; a key file holds 64 hex characters".into()))?
            .trim();
        if text.len() != 2 * KEY_BYTES {
            return Err(bad(format!(
                "holds {} characters; a key file holds 64 hex characters",
                text.chars().count()
            )));
        }
        let mut bytes = [0u8; KEY_BYTES];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| bad("not hexadecimal; a key file holds 64 hex characters".into()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Writes a new random key to a new file (and its missing parent directories),
    /// readable by the owner only: the file is created with mode 0600, so it is never
    /// world-readable, not even between creation and a `chmod`. Synced, with its
    /// directory entry, before returning. Refuses to overwrite an existing file.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let key = Self::generate();
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent).map_err(error::io_at(parent))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|error| {
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::KeyFileExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    error::io_at(path)(error)
                }
            })?;
        // The umask can only narrow the creation mode; set it exactly so the owner can
        // still read the key whatever the umask was.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(error::io_at(path))?;
        writeln!(file, "{}", hex::encode(key.bytes)).map_err(error::io_at(path))?;
        file.sync_all().map_err(error::io_at(path))?;
        store::sync_dir(parent.unwrap_or(Path::new(".")))?;
        Ok(key)
    }

    /// Where the key file goes when the operator names none: a file *beside* the data
    /// directory, never inside it (a copy of the data directory must not carry its key):
    /// `/var/lib/rapport/data` → `/var/lib/rapport/data.master-key`.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        let named = |dir: &Path| {
            dir.file_name().map(|name| {
                let mut file = name.to_os_string();
                file.push(DEFAULT_KEY_SUFFIX);
                dir.with_file_name(file)
            })
        };
        // `.` or `..` have no file name; the absolute form does.
        named(data_dir)
            .or_else(|| std::fs::canonicalize(data_dir).ok().and_then(|d| named(&d)))
            .or_else(|| std::path::absolute(data_dir).ok().and_then(|d| named(&d)))
            .unwrap_or_else(|| PathBuf::from(format!("rapport{DEFAULT_KEY_SUFFIX}")))
    }

    /// The master key for `serve`, its path, and whether it was just created.
    ///
    /// An `explicit` path (flag or environment) must exist. With none, the
    /// [default path](Self::default_path) is loaded, or created there when the data
    /// directory has no key store yet (`true`: the caller logs where the key is, and that
    /// production keeps it elsewhere). A data directory that has a key store but no key
    /// at the default path is an error: a new key would make the existing keys unreadable.
    pub fn resolve(
        data_dir: &Path,
        explicit: Option<&Path>,
    ) -> Result<(Self, PathBuf, bool), KeyError> {
        if let Some(path) = explicit {
            return Ok((Self::load(path)?, path.to_path_buf(), false));
        }
        let path = Self::default_path(data_dir);
        match Self::load(&path) {
            Ok(key) => Ok((key, path, false)),
            Err(KeyError::MissingKeyFile { .. }) if KeyStore::exists(data_dir) => {
                Err(KeyError::KeyFileMissingForExistingStore {
                    data_dir: data_dir.to_path_buf(),
                    expected: path,
                })
            }
            Err(KeyError::MissingKeyFile { .. }) => Ok((Self::create(&path)?, path, true)),
            Err(error) => Err(error),
        }
    }
}

/// A key file others can read is still used (container secrets are often mounted
/// 0644), but the operator should know.
fn warn_if_readable_by_others(file: &std::fs::File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the master key file is readable by group or others; chmod 600 it"
        );
    }
}

/// One customer's key for their personal fields. `Debug` does not show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey {
    bytes: [u8; KEY_BYTES],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// The key with these bytes (tests, and the key store when it unwraps a key).
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self { bytes }
    }

    /// Encrypts and authenticates `plaintext`, binding `ad` (authenticated, not stored).
    ///
    /// Deterministic: the 24-byte nonce is a synthetic IV, the first 24 bytes of keyed
    /// BLAKE3 (key = `derive_key("rapport 2026 personal-data nonce", data key)`) over
    /// `len(ad) as u64 LE ‖ ad ‖ plaintext`. Re-sending the same event (an idempotent
    /// append compares content) must produce identical bytes; the price is that equal
    /// (ad, plaintext) pairs are recognisable as equal, which the lookup tokens reveal
    /// anyway. A nonce never repeats for different inputs short of a BLAKE3 collision.
    ///
    /// Output: `1 ‖ nonce:[u8;24] ‖ ciphertext ‖ tag:[u8;16]` (41 bytes more than the
    /// plaintext).
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce_key = blake3::derive_key(NONCE_CONTEXT, &self.bytes);
        let mut hasher = blake3::Hasher::new_keyed(&nonce_key);
        hasher.update(&(ad.len() as u64).to_le_bytes());
        hasher.update(ad);
        hasher.update(plaintext);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&hasher.finalize().as_bytes()[..NONCE_BYTES]);
        let sealed = XChaCha20Poly1305::new(&self.bytes.into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            // Only fails past 256 GiB of plaintext (the cipher's counter limit).
            .expect("XChaCha20-Poly1305 seals any in-memory value");
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of `sealed`, if it was sealed with this key and this `ad` and not
    /// changed since; [`KeyError::Decrypt`] otherwise.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(KeyError::Decrypt);
        };
        if version != SEAL_VERSION {
            return Err(KeyError::Corrupt(format!(
                "sealed value has format version {version}; this build reads version {SEAL_VERSION}"
            )));
        }
        if rest.len() < NONCE_BYTES + TAG_BYTES {
            return Err(KeyError::Decrypt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at the nonce length");
        XChaCha20Poly1305::new(&self.bytes.into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: ad,
                },
            )
            .map_err(|_| KeyError::Decrypt)
    }
}

/// Kinds of looked-up identifiers; each hashes under its own tag, so an email and a
/// phone number that happen to be the same string give different tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupKind {
    /// An email address ([`normalise_email`]).
    Email,
    /// A phone number ([`normalise_phone`]).
    Phone,
    /// An id in another system, `system:value` ([`normalise_external_id`]).
    ExternalId,
}

impl LookupKind {
    /// The byte hashed before the value. Stored tokens depend on it: never renumber.
    fn tag(self) -> u8 {
        match self {
            Self::Email => 1,
            Self::Phone => 2,
            Self::ExternalId => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes(random_bytes().unwrap())
    }

    #[test]
    fn seal_open_round_trip() {
        let key = key();
        for plaintext in [&b""[..], b"Ann Lee", &[0xAB; 5000]] {
            let sealed = key.seal(b"customer-1/name", plaintext);
            assert_eq!(sealed.len(), plaintext.len() + 41);
            assert_eq!(sealed[0], SEAL_VERSION);
            assert_eq!(key.open(b"customer-1/name", &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn seal_is_deterministic_and_depends_on_every_input() {
        let key = key();
        let sealed = key.seal(b"ad", b"Ann Lee");
        assert_eq!(sealed, key.seal(b"ad", b"Ann Lee"));
        assert_ne!(sealed, key.seal(b"ad", b"Ann Lea"));
        assert_ne!(sealed, key.seal(b"ae", b"Ann Lee"));
        // The length prefix keeps the ad/plaintext boundary in the nonce.
        assert_ne!(sealed[1..25], key.seal(b"adA", b"nn Lee")[1..25]);
        assert_ne!(sealed, self::key().seal(b"ad", b"Ann Lee"));
    }

    #[test]
    fn open_refuses_wrong_ad_wrong_key_and_tampering() {
        let key = key();
        let sealed = key.seal(b"ad", b"Ann Lee");
        assert!(matches!(
            key.open(b"other", &sealed),
            Err(KeyError::Decrypt)
        ));
        assert!(matches!(
            self::key().open(b"ad", &sealed),
            Err(KeyError::Decrypt)
        ));
        for i in 1..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(key.open(b"ad", &tampered), Err(KeyError::Decrypt)),
                "byte {i}"
            );
        }
        let mut versioned = sealed.clone();
        versioned[0] = 2;
        assert!(matches!(
            key.open(b"ad", &versioned),
            Err(KeyError::Corrupt(_))
        ));
        for short in [0, 1, 40] {
            assert!(matches!(
                key.open(b"ad", &sealed[..short]),
                Err(KeyError::Decrypt)
            ));
        }
    }

    #[test]
    fn debug_does_not_show_key_bytes() {
        let master = MasterKey::from_bytes([0xAB; 32]);
        let data = DataKey::from_bytes([0xAB; 32]);
        for shown in [format!("{master:?}"), format!("{data:?}")] {
            assert!(!shown.to_lowercase().contains("ab"), "{shown}");
            assert!(!shown.contains("171"), "{shown}");
        }
    }

    #[test]
    fn key_file_round_trip_and_bad_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("k.master-key");
        let key = MasterKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MasterKey::load(&path).unwrap(), key);
        assert!(matches!(
            MasterKey::create(&path),
            Err(KeyError::KeyFileExists { .. })
        ));
        assert_eq!(MasterKey::load(&path).unwrap(), key, "not overwritten");

        let other = dir.path().join("padded");
        std::fs::write(&other, format!("\n  {}  \n\n", "0F".repeat(32))).unwrap();
        assert_eq!(
            MasterKey::load(&other).unwrap(),
            MasterKey::from_bytes([0x0F; 32])
        );
        for (contents, reason) in [
            ("0f".repeat(31), "characters"),
            ("zz".repeat(32), "hexadecimal"),
            ("0f".repeat(33), "characters"),
            ("0".repeat(2000), "longer"),
        ] {
            std::fs::write(&other, contents).unwrap();
            match MasterKey::load(&other) {
                Err(KeyError::BadKeyFile { reason: got, .. }) => {
                    assert!(got.contains(reason), "{got}")
                }
                result => panic!("{result:?}"),
            }
        }
        std::fs::write(&other, [0xFF, 0xFE]).unwrap();
        assert!(matches!(
            MasterKey::load(&other),
            Err(KeyError::BadKeyFile { .. })
        ));
        assert!(matches!(
            MasterKey::load(&dir.path().join("none")),
            Err(KeyError::MissingKeyFile { .. })
        ));
    }

    #[test]
    fn default_path_is_beside_the_data_dir() {
        assert_eq!(
            MasterKey::default_path(Path::new("/var/lib/rapport/data")),
            Path::new("/var/lib/rapport/data.master-key")
        );
        assert_eq!(
            MasterKey::default_path(Path::new("/var/lib/rapport/data/")),
            Path::new("/var/lib/rapport/data.master-key")
        );
        assert_eq!(
            MasterKey::default_path(Path::new("data")),
            Path::new("data.master-key")
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let dotted = data.join(".");
        let path = MasterKey::default_path(&dotted);
        assert_eq!(
            path.parent().unwrap().canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert_eq!(path.file_name().unwrap(), "data.master-key");
    }

    #[test]
    fn resolve_explicit_default_and_existing_store() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // An explicit path must exist.
        let named = dir.path().join("named.key");
        assert!(matches!(
            MasterKey::resolve(&data, Some(&named)),
            Err(KeyError::MissingKeyFile { .. })
        ));
        assert!(!MasterKey::default_path(&data).exists(), "nothing created");
        let explicit = MasterKey::create(&named).unwrap();
        let (key, path, created) = MasterKey::resolve(&data, Some(&named)).unwrap();
        assert_eq!(
            (key, path, created),
            (explicit.clone(), named.clone(), false)
        );

        // None named, no store: created beside the data dir, then loaded.
        let (key, path, created) = MasterKey::resolve(&data, None).unwrap();
        assert_eq!(path, dir.path().join("data.master-key"));
        assert!(created);
        let (again, _, created) = MasterKey::resolve(&data, None).unwrap();
        assert_eq!((again, created), (key.clone(), false));

        // A store exists and the default file is missing: never a new key.
        drop(KeyStore::open(&data, &key).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            MasterKey::resolve(&data, None),
            Err(KeyError::KeyFileMissingForExistingStore { .. })
        ));
        assert!(!path.exists());
    }
}
