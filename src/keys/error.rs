//! Errors of the key layer. Every message names the file or directory at fault, because
//! the operator who reads it is usually looking for a misplaced key file.

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The master key does not open the key store. Nothing on disk was changed.
    #[error(
        "the master key does not match the key store in {}: wrong key file, or the store was \
         rotated to another master key; nothing was changed",
        dir.display()
    )]
    WrongMasterKey {
        /// The key store directory (`DATA_DIR/keys`).
        dir: PathBuf,
    },
    /// The customer's personal data was erased; their key never comes back.
    #[error("customer {0} was erased: their data key is deleted and is never re-created")]
    Erased(Uuid),
    /// A file operation failed (the message names the file).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored key material does not match what was written (checksum, magic, length).
    #[error("key store corrupted: {0}")]
    Corrupt(String),
    /// A master key file exists but does not hold a key.
    #[error("master key file {}: {reason}", path.display())]
    BadKeyFile {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The master key file named by the operator does not exist.
    #[error("master key file {} does not exist", path.display())]
    MissingKeyFile {
        /// The file looked for.
        path: PathBuf,
    },
    /// No key file was named, the default one is missing, and the data directory already
    /// has a key store: a new key would make every existing key unreadable.
    #[error(
        "the data directory {} has a key store, but its master key is not at the default path {}; \
         name the key file (--master-key / RAPPORT_MASTER_KEY) instead of letting a new key be made",
        data_dir.display(),
        expected.display()
    )]
    KeyFileMissingForExistingStore {
        /// The data directory.
        data_dir: PathBuf,
        /// The default key file path that was looked for.
        expected: PathBuf,
    },
    /// [`super::MasterKey::create`] found a file where it was to write the key.
    #[error("master key file {} already exists; refusing to overwrite it", path.display())]
    KeyFileExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Sealed bytes do not open with this key and associated data: wrong key, wrong
    /// associated data, or tampered bytes. Deliberately says no more (AEAD practice).
    #[error("sealed data could not be opened (wrong key, wrong associated data, or tampered)")]
    Decrypt,
    /// Another process (or another `KeyStore` in this one) holds the key store.
    #[error(
        "the key store {} is in use by another process (is `rapport serve` running on it?)",
        .0.display()
    )]
    Locked(PathBuf),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Adds the path to an I/O error, keeping its kind, so the message says which file.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |error| {
        KeyError::Io(std::io::Error::new(
            error.kind(),
            format!("{}: {error}", path.display()),
        ))
    }
}
