//! The write-ahead journal that makes a group commit durable with one `fdatasync`.
//!
//! sled's `flush` ends in `sync_file_range`, which survives a killed process but not a
//! power cut; making it survive one costs a second device round trip (`fdatasync` of
//! sled's file) on every commit. Instead the writer appends each group's chunks — the
//! events tree's new entries, self-verifying through the hash chain — to this journal
//! and syncs only it; sled (its blob files too) is flushed and synced at checkpoints,
//! after which the journal starts over in a new epoch (emptied at a clean shutdown).
//! Opening the log replays journal chunks sled does not have yet, and the indices are
//! re-derived from the events as after any crash.
//!
//! Record format (all integers little-endian):
//! ```text
//! record = magic:u32 (0x32_41_50_57 "WPA2") | body_len:u32 | checksum:[u8;16] | body
//! body   = epoch:u64 | seq:u64 | count:u32 | count × ( first_position:u64 | chunk_len:u32 | chunk )
//! checksum = first 16 bytes of BLAKE3(body)
//! ```
//! A torn or partial record at the end (a crash mid-write) fails its checksum and ends
//! the journal there: it was never acknowledged.
//!
//! The file is preallocated with zeros and rewritten from the start after each
//! checkpoint: an fdatasync that only overwrites allocated blocks needs no metadata
//! update, which on this machine's disk is ~30% faster than one that grows the file
//! (106 µs vs 152 µs p50, `shared/peers/fsync_probe.c`). Each checkpoint starts a new
//! epoch (kept in sled's `meta` with the checkpoint), and the records of an epoch are
//! numbered from 0. Opening reads the records of the current epoch in sequence and stops
//! at the first that is not the next one: a record left from an earlier epoch (intact,
//! and where a lost new record should be, after a power cut kept a later new record but
//! not that one) or a gap. Everything past such a point was never acknowledged, since an
//! acknowledgement needs an fdatasync that covers every record before it.
//!
//! Directories of format 4 and older wrote records without epoch and sequence (magic
//! 0x52_41_50_57 "WPAR", body = count | chunks); their journal is read the old way, once,
//! when such a directory first opens (its checkpoint then starts epoch 1).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::LogError;

/// Records of format 4 and older: no epoch, no sequence.
const MAGIC_LEGACY: u32 = 0x5741_5052;
/// Records with an epoch and a sequence number.
const MAGIC: u32 = 0x3241_5057;
const HEADER_BYTES: usize = 4 + 4 + 16;
/// The epoch and sequence number at the start of a body.
const ORDER_BYTES: usize = 8 + 8;

/// A chunk to be stored in the events tree: its first position and its bytes.
pub type ChunkEntry = (u64, Vec<u8>);

/// The journal file.
pub struct Wal {
    file: File,
    /// Where the next record goes: bytes written since the last checkpoint.
    len_bytes: u64,
    /// Size of the file, all of it written (zeros or records).
    allocated_bytes: u64,
    /// The last record's buffer, kept for its capacity (at most a group's chunks): a
    /// fresh one per group was a fresh run of pages for the kernel to zero each time.
    buffer: Vec<u8>,
    /// The epoch of the records written now (the last checkpoint's).
    epoch: u64,
    /// The sequence number of the next record in this epoch.
    next_seq: u64,
}

/// The journal grows by zero-filled steps of this many bytes, ahead of the records, so
/// that almost every append overwrites allocated blocks. It stops growing once it holds
/// a checkpoint's worth (the journal then starts over from the beginning).
const PREALLOCATE_STEP_BYTES: u64 = 4 * 1024 * 1024;

fn checksum(body: &[u8]) -> [u8; 16] {
    blake3::hash(body).as_bytes()[..16]
        .try_into()
        .expect("16 bytes")
}

impl Wal {
    /// Opens (or creates) the journal at `path` and returns the chunks of the records of
    /// `epoch` (the last checkpoint's) from the start, in sequence, stopping at the first
    /// record that is not intact or not the next of that epoch. A first record of a later
    /// epoch is read as the start of that epoch. `None`: the directory recorded no epoch
    /// (new, or of format 4 or older, whose records carry none and are read while intact).
    pub fn open(path: &Path, epoch: Option<u64>) -> Result<(Self, Vec<ChunkEntry>), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // Record by record into one reused buffer, not the whole preallocated file into
        // memory at once. (A checkpoint does not clear the file: the records before it
        // stay readable until overwritten, and the journal replay skips their chunks.)
        let allocated_bytes = file.metadata()?.len();
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        let mut body = Vec::new();
        // The epoch whose records are read; `None` until known in a directory that has
        // recorded none (a new one, or one of format 4 or older).
        let mut epoch = epoch;
        let mut legacy = false;
        let mut next_seq = 0u64;
        while let Some((magic, body_len)) = read_record(&file, offset, allocated_bytes, &mut body)?
        {
            if magic == MAGIC_LEGACY {
                // Records of an older build: only in a directory that recorded no epoch,
                // and before any record that has one.
                if epoch.is_some() {
                    break;
                }
                legacy = true;
                decode_body(&body, &mut chunks)?;
            } else {
                if legacy || body.len() < ORDER_BYTES {
                    break;
                }
                let word =
                    |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
                let (found, seq) = (word(0), word(8));
                // The first record may be of a later epoch than the one recorded: sled then
                // lacks the checkpoint that began it (a copy of the directory taken before
                // it), and the journal holds everything since.
                let first_of_later = next_seq == 0 && seq == 0 && epoch.is_none_or(|e| found > e);
                if !(first_of_later || (Some(found) == epoch && seq == next_seq)) {
                    break;
                }
                epoch = Some(found);
                decode_body(&body[ORDER_BYTES..], &mut chunks)?;
                next_seq += 1;
            }
            offset += (HEADER_BYTES + body_len) as u64;
        }
        Ok((
            Self {
                file,
                len_bytes: offset,
                allocated_bytes,
                buffer: Vec::new(),
                epoch: epoch.unwrap_or(0),
                next_seq,
            },
            chunks,
        ))
    }

    /// Appends one record holding `chunks` and makes it durable (`fdatasync`).
    pub fn append(&mut self, chunks: &[ChunkEntry]) -> Result<(), LogError> {
        self.write_record(chunks)?;
        self.file.sync_data()?;
        Ok(())
    }

    /// A second handle to the file, for the thread that makes records durable while
    /// the writer goes on (see `writer`).
    pub fn sync_handle(&self) -> Result<File, LogError> {
        Ok(self.file.try_clone()?)
    }

    /// Writes one record holding `chunks`, without syncing it: the caller syncs.
    pub fn write_record<C: AsRef<[u8]>>(&mut self, chunks: &[(u64, C)]) -> Result<(), LogError> {
        let body_len: usize = ORDER_BYTES
            + 4
            + chunks
                .iter()
                .map(|(_, c)| 8 + 4 + c.as_ref().len())
                .sum::<usize>();
        let mut record = std::mem::take(&mut self.buffer);
        record.clear();
        record.reserve(HEADER_BYTES + body_len);
        record.extend_from_slice(&MAGIC.to_le_bytes());
        record.extend_from_slice(
            &u32::try_from(body_len)
                .map_err(|_| LogError::Corrupt("a group commit larger than 4 GiB".into()))?
                .to_le_bytes(),
        );
        record.extend_from_slice(&[0; 16]);
        let body_start = record.len();
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&self.next_seq.to_le_bytes());
        record.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
        for (first_position, chunk) in chunks {
            let chunk = chunk.as_ref();
            record.extend_from_slice(&first_position.to_le_bytes());
            record.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            record.extend_from_slice(chunk);
        }
        let sum = checksum(&record[body_start..]);
        record[8..24].copy_from_slice(&sum);
        let end = self.len_bytes + record.len() as u64;
        if end > self.allocated_bytes {
            self.preallocate(end + PREALLOCATE_STEP_BYTES)?;
        }
        self.file.write_all_at(&record, self.len_bytes)?;
        self.len_bytes += record.len() as u64;
        self.next_seq += 1;
        self.buffer = record;
        Ok(())
    }

    /// Zero-fills the file up to `target` bytes and syncs its new size. Zeros, not
    /// `set_len` (which leaves holes whose first write is again a metadata change).
    fn preallocate(&mut self, target: u64) -> Result<(), LogError> {
        let zeros = vec![0u8; 1024 * 1024];
        while self.allocated_bytes < target {
            let n = zeros.len().min((target - self.allocated_bytes) as usize);
            self.file.write_all_at(&zeros[..n], self.allocated_bytes)?;
            self.allocated_bytes += n as u64;
        }
        self.file.sync_all()?;
        Ok(())
    }

    /// Bytes in the journal since the last checkpoint.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Empties the file, at a clean shutdown after the last checkpoint: a stopped
    /// server's directory holds no dead journal (up to a checkpoint's worth of records
    /// sled already has, 64 MiB). The next session preallocates it again as it grows.
    pub fn truncate(&mut self) -> Result<(), LogError> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len_bytes = 0;
        self.allocated_bytes = 0;
        self.next_seq = 0;
        Ok(())
    }

    /// Starts the journal over in `epoch` once everything in it is durable in sled and
    /// `epoch` is recorded with that checkpoint. The old records stay until overwritten;
    /// opening no longer reads them (another epoch), and they only hold positions sled
    /// already has.
    pub fn reset(&mut self, epoch: u64) -> Result<(), LogError> {
        self.len_bytes = 0;
        self.epoch = epoch;
        self.next_seq = 0;
        Ok(())
    }

    /// The epoch of the records written now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Reads the record at `offset` of a journal of `file_len` bytes into `body` and returns
/// its magic and body length, or `None` where the intact records end (zeros, a torn or
/// partly written record, a bad checksum). A header's length never makes it read past the
/// file.
fn read_record(
    file: &File,
    offset: u64,
    file_len: u64,
    body: &mut Vec<u8>,
) -> Result<Option<(u32, usize)>, LogError> {
    if offset + HEADER_BYTES as u64 > file_len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, offset)?;
    let magic = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let body_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    if (magic != MAGIC && magic != MAGIC_LEGACY)
        || offset + (HEADER_BYTES + body_len) as u64 > file_len
    {
        return Ok(None);
    }
    body.clear();
    body.resize(body_len, 0);
    file.read_exact_at(body, offset + HEADER_BYTES as u64)?;
    Ok((checksum(body) == header[8..24]).then_some((magic, body_len)))
}

fn decode_body(body: &[u8], chunks: &mut Vec<ChunkEntry>) -> Result<(), LogError> {
    let corrupt = || LogError::Corrupt("journal record with a valid checksum is malformed".into());
    let count = u32::from_le_bytes(body.get(0..4).ok_or_else(corrupt)?.try_into().expect("4"));
    let mut offset = 4;
    for _ in 0..count {
        let first = u64::from_le_bytes(
            body.get(offset..offset + 8)
                .ok_or_else(corrupt)?
                .try_into()
                .expect("8"),
        );
        let len = u32::from_le_bytes(
            body.get(offset + 8..offset + 12)
                .ok_or_else(corrupt)?
                .try_into()
                .expect("4"),
        ) as usize;
        offset += 12;
        let chunk = body.get(offset..offset + len).ok_or_else(corrupt)?;
        chunks.push((first, chunk.to_vec()));
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let end = {
            let (mut wal, chunks) = Wal::open(&path, Some(0)).unwrap();
            assert!(chunks.is_empty());
            wal.append(&[(1, vec![1, 2, 3]), (4, vec![4])]).unwrap();
            wal.append(&[(5, vec![5; 100])]).unwrap();
            wal.len_bytes()
        };
        // A crash in the middle of the third record's write.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mut torn = MAGIC.to_le_bytes().to_vec();
        torn.extend_from_slice(&50u32.to_le_bytes());
        torn.extend_from_slice(&[7; 20]);
        file.write_all_at(&torn, end).unwrap();
        let (mut wal, chunks) = Wal::open(&path, Some(0)).unwrap();
        assert_eq!(
            chunks,
            vec![(1, vec![1, 2, 3]), (4, vec![4]), (5, vec![5; 100])]
        );
        assert_eq!(
            wal.len_bytes(),
            end,
            "the next record overwrites the torn one"
        );
        // After a checkpoint the journal starts over; a shorter new record followed by
        // the remains of old ones reads as the new record (and old, skipped chunks).
        wal.reset(1).unwrap();
        wal.append(&[(6, vec![6])]).unwrap();
        drop(wal);
        let (_, chunks) = Wal::open(&path, Some(1)).unwrap();
        assert_eq!(
            chunks,
            vec![(6, vec![6])],
            "the old epoch's records are not read"
        );
    }

    /// A power cut can keep a later record of the new epoch and lose an earlier one, so
    /// that an intact record of the old epoch stands where the lost one was: the journal
    /// ends there (what follows was never acknowledged), instead of reading past it.
    #[test]
    fn an_old_epochs_record_in_place_of_a_lost_one_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let record = |n: u64| vec![(n, vec![n as u8; 40])];
        let old = {
            let (mut wal, _) = Wal::open(&path, Some(3)).unwrap();
            for n in 1..=4 {
                wal.append(&record(n)).unwrap();
            }
            wal.reset(4).unwrap();
            std::fs::read(&path).unwrap()
        };
        let (mut wal, _) = Wal::open(&path, Some(4)).unwrap();
        for n in 5..=7 {
            wal.append(&record(n)).unwrap();
        }
        let size = usize::try_from(wal.len_bytes()).unwrap() / 3;
        drop(wal);
        let mut crashed = std::fs::read(&path).unwrap();
        crashed[size..2 * size].copy_from_slice(&old[size..2 * size]);
        std::fs::write(&path, &crashed).unwrap();
        let (wal, chunks) = Wal::open(&path, Some(4)).unwrap();
        assert_eq!(chunks, record(5));
        assert_eq!(
            wal.len_bytes(),
            size as u64,
            "the next record goes in the gap"
        );
        drop(wal);
        // A directory whose sled lacks the checkpoint that began epoch 4 (an older epoch
        // recorded, or none) reads the journal's epoch all the same.
        for recorded in [Some(2), None] {
            let (wal, chunks) = Wal::open(&path, recorded).unwrap();
            assert_eq!((chunks, wal.epoch()), (record(5), 4), "{recorded:?}");
        }
        // The whole old epoch is not read either.
        std::fs::write(&path, &old).unwrap();
        assert!(Wal::open(&path, Some(4)).unwrap().1.is_empty());
        assert_eq!(Wal::open(&path, Some(3)).unwrap().1.len(), 4);
    }

    /// A directory of format 4 or older has records without epochs: read while no epoch
    /// is recorded, never once one is.
    #[test]
    fn records_without_epochs_are_read_only_before_the_first_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&[9, 9]);
        let mut legacy = MAGIC_LEGACY.to_le_bytes().to_vec();
        legacy.extend_from_slice(&(body.len() as u32).to_le_bytes());
        legacy.extend_from_slice(&checksum(&body));
        legacy.extend_from_slice(&body);
        std::fs::write(&path, &legacy).unwrap();
        let (wal, chunks) = Wal::open(&path, None).unwrap();
        assert_eq!(chunks, vec![(9, vec![9, 9])]);
        assert_eq!(wal.epoch(), 0);
        drop(wal);
        assert!(Wal::open(&path, Some(0)).unwrap().1.is_empty());
        assert!(Wal::open(&path, Some(1)).unwrap().1.is_empty());
    }

    #[test]
    fn a_flipped_bit_ends_the_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        {
            let (mut wal, _) = Wal::open(&path, Some(0)).unwrap();
            wal.append(&[(1, vec![1])]).unwrap();
            wal.append(&[(2, vec![2])]).unwrap();
            let end = wal.len_bytes();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, end - 1).unwrap();
            file.write_all_at(&[byte[0] ^ 1], end - 1).unwrap();
        }
        assert_eq!(Wal::open(&path, Some(0)).unwrap().1, vec![(1, vec![1])]);
    }

    #[test]
    fn a_length_past_the_end_of_the_file_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let end = {
            let (mut wal, _) = Wal::open(&path, Some(0)).unwrap();
            wal.append(&[(1, vec![1])]).unwrap();
            wal.len_bytes()
        };
        // A header claiming a 4 GiB body: nothing is allocated or read for it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mut header = MAGIC.to_le_bytes().to_vec();
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        header.extend_from_slice(&[0; 16]);
        file.write_all_at(&header, end).unwrap();
        let (wal, chunks) = Wal::open(&path, Some(0)).unwrap();
        assert_eq!(chunks, vec![(1, vec![1])]);
        assert_eq!(wal.len_bytes(), end);
    }
}
