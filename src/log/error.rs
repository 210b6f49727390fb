//! Errors of the log layer. Storage faults are fatal for the request; conflicts are
//! expected outcomes that carry what a client needs to retry (like sled's CAS result).

use uuid::Uuid;

use super::ExpectedRevision;

/// A storage-level fault: I/O, corruption, a format this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled reported an error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes do not match what was written (hash, position or encoding mismatch).
    #[error("log corrupted: {0}")]
    Corrupt(String),
    /// The data directory was written by a format this build does not know.
    #[error(
        "data directory has on-disk format version {found}; this build reads version {supported} only"
    )]
    UnsupportedFormat {
        /// Version found in the `meta` tree.
        found: u32,
        /// Version this build writes and reads.
        supported: u32,
    },
    /// Another process (usually a running server) holds the database lock.
    #[error(
        "the data directory {0} is in use by another process (is `rapport serve` running on it?); \
         stop it or work on an offline copy"
    )]
    Locked(String),
    /// The writer stopped after an earlier fault, or the log is shutting down.
    #[error("the log is not accepting writes: {0}")]
    Unavailable(String),
}

/// Why an append was not written. Nothing was changed in every case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's revision is not the expected one; a client re-reads and retries.
    #[error("{stream}: expected {expected}, but the stream {}", describe_actual(*.actual))]
    WrongExpectedRevision {
        /// The stream whose expectation failed.
        stream: String,
        /// What the client expected.
        expected: ExpectedRevision,
        /// The stream's last revision, `None` when the stream does not exist.
        actual: Option<u64>,
    },
    /// Event ids exist with other content, or a batch mixes existing and new ids.
    #[error("event ids already used by other events: {}", join_ids(.ids))]
    EventIdConflict {
        /// The ids at fault.
        ids: Vec<Uuid>,
    },
    /// The same event id appears twice in one append.
    #[error("event id {0} appears more than once in the append")]
    DuplicateIdInBatch(Uuid),
    /// An append with no events.
    #[error("an append needs at least one event")]
    Empty,
    /// The writer queue stayed full; retry later.
    #[error("the log is overloaded: the append queue stayed full; retry later")]
    Overloaded,
    /// A storage fault; the append may not be retried blindly.
    #[error(transparent)]
    Log(#[from] LogError),
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        Some(revision) => format!("is at revision {revision}"),
        None => "does not exist (no stream)".to_owned(),
    }
}

fn join_ids(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream has no events.
    #[error("stream {0} not found")]
    StreamNotFound(String),
    /// A storage fault.
    #[error(transparent)]
    Log(#[from] LogError),
}
