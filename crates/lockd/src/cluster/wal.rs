//! The Raft log's files: an append-only run of segment files of checksummed records.
//!
//! Why not redb, like the rest of the node's state: a redb commit writes and fsyncs pages of a
//! B-tree, about 0.5 ms on the disks this was measured on, where appending to a file whose
//! blocks are already allocated and `fdatasync`ing it takes about 0.15 ms (docs/cluster.md,
//! "Performance"), and every write of a cluster waits for that on a majority.
//!
//! A directory holds segments named by a sequence number (`00000000000000000001.wal`). Each is
//! preallocated (`fallocate`) so an append changes no file size, and begins with the log's
//! pointers (vote, committed, last purged) so that older segments can be deleted once every
//! entry in them is purged. A record is `[length: u32][crc32: u32][kind: u8][payload]`, the
//! length and checksum covering the kind and payload; a length of zero (the preallocated
//! zeros) ends a segment. Replaying the records in order gives the log: an entry at index `i`
//! replaces whatever was at `i` and after it, as a truncate does.
//!
//! A write is a batch of records written at the end of the active segment then `fdatasync`ed
//! (or `fsync`ed, when it had to start a new segment, with its directory); only then does the
//! caller acknowledge it. A crash can leave a torn batch at the end of the last segment: the
//! first record that does not check out there ends the log, and the rest of the segment is
//! zeroed before anything is written after it, so that a record of the torn batch can never
//! come back behind a newer one. A bad record anywhere else is damage, and opening fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The size a new segment is given (more when one record needs it).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// A record's header: its length, then its checksum.
const HEADER: usize = 8;
/// The longest record this log writes or reads (an entry holds at most a batch of requests).
const MAX_RECORD: usize = 1 << 30;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;

/// One change to the log, as written. Pointers (vote, committed, purged) are opaque bytes to
/// this layer: the log store encodes them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Record<'a> {
    /// The entry at `index`, replacing it and every entry after it.
    Entry {
        index: u64,
        bytes: &'a [u8],
    },
    /// Removes the entries from `since` on.
    Truncate {
        since: u64,
    },
    /// Removes the entries up to `index`, which `log_id` names.
    Purge {
        index: u64,
        log_id: &'a [u8],
    },
    Vote(&'a [u8]),
    Committed(&'a [u8]),
}

/// Where an entry's bytes are: segment, offset in it, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// The log's pointers, as their latest records left them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Pointers {
    pub(crate) vote: Option<Vec<u8>>,
    pub(crate) committed: Option<Vec<u8>>,
    pub(crate) last_purged: Option<(u64, Vec<u8>)>,
}

/// What opening the log found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) pointers: Pointers,
    /// The live entries, by index.
    pub(crate) entries: BTreeMap<u64, Location>,
    /// Each segment's file, for reading entries back.
    pub(crate) files: BTreeMap<u64, Arc<File>>,
}

/// Why the log's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("the Raft log in {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Raft log segment {path} is damaged at byte {offset}: {what}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
}

/// The writing end of the log: the active segment and where the next record goes. Owned by
/// one writer.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Every segment, with the highest entry index written in it.
    segments: BTreeMap<u64, Segment>,
    active: u64,
    position: u64,
    /// The pointers, repeated at the start of each new segment.
    pointers: Pointers,
    /// A segment was started or deleted since [`Wal::take_files_changed`] last said so.
    files_changed: bool,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    capacity: u64,
    last_index: Option<u64>,
}

impl Wal {
    /// Opens the log in `dir` (created when missing), replaying its segments; segments are
    /// given `segment_bytes` (tests use small ones).
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovered), WalError> {
        let io_error = |source| WalError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let mut numbers = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_error)? {
            let name = item.map_err(io_error)?.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name
                .strip_suffix(".wal")
                .and_then(|n| n.parse::<u64>().ok())
            {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        let mut replay = Replay::default();
        let mut segments = BTreeMap::new();
        let mut position = 0;
        for (i, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error)?;
            let mut bytes = Vec::new();
            (&file).read_to_end(&mut bytes).map_err(io_error)?;
            let last = i + 1 == numbers.len();
            let end = replay.segment(number, &bytes);
            if let Some(bad) = end.bad {
                if !last {
                    return Err(WalError::Damaged {
                        path,
                        offset: end.offset,
                        what: bad,
                    });
                }
                // A torn batch: never acknowledged. Zero it so no record of it can be read
                // after newer ones.
                zero_from(&file, end.offset, bytes.len() as u64).map_err(io_error)?;
                file.sync_data().map_err(io_error)?;
                tracing::warn!(
                    segment = %path.display(),
                    offset = end.offset,
                    reason = bad,
                    "the Raft log ended in a torn write (a crash during an append); it was cut there"
                );
            }
            position = end.offset;
            segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    capacity: bytes.len() as u64,
                    last_index: end.last_index,
                },
            );
        }
        let mut wal = Wal {
            dir: dir.to_owned(),
            segment_bytes,
            active: numbers.last().copied().unwrap_or(0),
            segments,
            position,
            pointers: replay.pointers.clone(),
            files_changed: false,
        };
        if wal.segments.is_empty() {
            wal.start_segment(0).map_err(io_error)?;
        } else if wal.position == 0 {
            // The last segment holds no record: a crash came after it was created and before
            // its header was durable. Later records must not land in a segment without the
            // pointers, or deleting the segments before it would lose them (the vote among
            // them).
            let mut header = wal.header();
            wal.flush(&mut header, true).map_err(io_error)?;
        }
        let recovered = Recovered {
            pointers: replay.pointers,
            entries: replay.entries,
            files: wal.files(),
        };
        Ok((wal, recovered))
    }

    /// Appends `records` and makes them durable (`sync`) or only written; returns where each
    /// entry record's bytes are (`None` for other records), and the file of any new segment.
    pub(crate) fn write(
        &mut self,
        records: &[Record<'_>],
        sync: bool,
    ) -> io::Result<Vec<Option<Location>>> {
        let mut locations = Vec::with_capacity(records.len());
        let mut buffer = Vec::new();
        for record in records {
            let encoded = encode(record);
            let room = self.capacity() - self.position - buffer.len() as u64;
            if encoded.len() as u64 > room {
                self.flush(&mut buffer, true)?;
                self.start_segment(encoded.len() as u64)?;
            }
            if let Record::Entry { index, bytes } = record {
                let offset = self.position + (buffer.len() + HEADER + 1 + 8) as u64;
                locations.push(Some(Location {
                    segment: self.active,
                    offset,
                    len: bytes.len() as u32,
                }));
                let last = &mut self.active_segment().last_index;
                *last = Some(last.map_or(*index, |last| last.max(*index)));
            } else {
                locations.push(None);
            }
            self.remember(record);
            buffer.extend_from_slice(&encoded);
        }
        self.flush(&mut buffer, sync)?;
        Ok(locations)
    }

    /// Whether a segment was started or deleted since the last call: whether readers need
    /// [`Wal::files`] again.
    pub(crate) fn take_files_changed(&mut self) -> bool {
        std::mem::take(&mut self.files_changed)
    }

    /// Each segment's file, for readers.
    pub(crate) fn files(&self) -> BTreeMap<u64, Arc<File>> {
        self.segments
            .iter()
            .map(|(number, segment)| (*number, Arc::clone(&segment.file)))
            .collect()
    }

    /// Deletes the oldest segments, before the active one, whose entries are all at or below
    /// `purged` (the purge must be durable first); returns their numbers.
    ///
    /// Only a run from the oldest: a record affects only what was written before it, so the
    /// records of deleted segments matter to no entry that remains, and each remaining segment
    /// begins with the pointers as they were when it started.
    pub(crate) fn delete_purged(&mut self, purged: u64) -> io::Result<Vec<u64>> {
        let doomed: Vec<u64> = self
            .segments
            .iter()
            .take_while(|(number, segment)| {
                **number < self.active && segment.last_index.is_none_or(|last| last <= purged)
            })
            .map(|(number, _)| *number)
            .collect();
        for number in &doomed {
            std::fs::remove_file(segment_path(&self.dir, *number))?;
            self.segments.remove(number);
            self.files_changed = true;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed)
    }

    fn capacity(&self) -> u64 {
        self.segments[&self.active].capacity
    }

    fn active_segment(&mut self) -> &mut Segment {
        self.segments
            .get_mut(&self.active)
            .unwrap_or_else(|| unreachable!("the active segment is always in the map"))
    }

    fn remember(&mut self, record: &Record<'_>) {
        match record {
            Record::Vote(bytes) => self.pointers.vote = Some(bytes.to_vec()),
            Record::Committed(bytes) => self.pointers.committed = Some(bytes.to_vec()),
            Record::Purge { index, log_id } => {
                self.pointers.last_purged = Some((*index, log_id.to_vec()));
            }
            Record::Entry { .. } | Record::Truncate { .. } => {}
        }
    }

    /// Writes `buffer` at the end of the active segment, then syncs it if asked.
    fn flush(&mut self, buffer: &mut Vec<u8>, sync: bool) -> io::Result<()> {
        let file = &self.segments[&self.active].file;
        if !buffer.is_empty() {
            file.write_all_at(buffer, self.position)?;
            self.position += buffer.len() as u64;
            buffer.clear();
        }
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// The records a segment begins with: the pointers as they are now.
    fn header(&self) -> Vec<u8> {
        let mut header = Vec::new();
        let pointers = &self.pointers;
        if let Some(vote) = &pointers.vote {
            header.extend(encode(&Record::Vote(vote)));
        }
        if let Some(committed) = &pointers.committed {
            header.extend(encode(&Record::Committed(committed)));
        }
        if let Some((index, log_id)) = &pointers.last_purged {
            header.extend(encode(&Record::Purge {
                index: *index,
                log_id,
            }));
        }
        header
    }

    /// Starts the next segment, with room for a record of `needed` bytes after its header, and
    /// makes it durable (allocation, header, directory entry) before it takes any record.
    fn start_segment(&mut self, needed: u64) -> io::Result<()> {
        let number = self.active + 1;
        let header = self.header();
        let capacity = self
            .segment_bytes
            .max(header.len() as u64 + needed + HEADER as u64);
        let path = segment_path(&self.dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        allocate(&file, capacity)?;
        file.write_all_at(&header, 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            number,
            Segment {
                file: Arc::new(file),
                capacity,
                last_index: None,
            },
        );
        self.active = number;
        self.position = header.len() as u64;
        self.files_changed = true;
        Ok(())
    }
}

/// Reads an entry's bytes back from its segment.
pub(crate) fn read_at(file: &File, location: Location) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; location.len as usize];
    file.read_exact_at(&mut bytes, location.offset)?;
    Ok(bytes)
}

/// Replays segments in order.
#[derive(Debug, Default)]
struct Replay {
    pointers: Pointers,
    entries: BTreeMap<u64, Location>,
}

/// Where replaying a segment stopped, and why if not at its end.
#[derive(Debug)]
struct SegmentEnd {
    offset: u64,
    bad: Option<&'static str>,
    last_index: Option<u64>,
}

impl Replay {
    fn segment(&mut self, number: u64, bytes: &[u8]) -> SegmentEnd {
        let mut offset = 0usize;
        let mut last_index = None;
        let end = |offset: usize, bad, last_index| SegmentEnd {
            offset: offset as u64,
            bad,
            last_index,
        };
        loop {
            let Some(header) = bytes.get(offset..offset + HEADER) else {
                // Too little room left for a record: the segment is full.
                return end(offset, None, last_index);
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len == 0 {
                if crc == 0 {
                    return end(offset, None, last_index);
                }
                return end(offset, Some("a record of length zero"), last_index);
            }
            let body_start = offset + HEADER;
            let Some(body) = bytes.get(body_start..body_start + len) else {
                return end(
                    offset,
                    Some("a record runs past the segment's end"),
                    last_index,
                );
            };
            if len > MAX_RECORD || crc32fast::hash(body) != crc {
                return end(
                    offset,
                    Some("a record's checksum does not match"),
                    last_index,
                );
            }
            match decode(body) {
                Some(record) => {
                    if let Record::Entry { index, bytes } = record {
                        last_index = Some(last_index.map_or(index, |last: u64| last.max(index)));
                        let at = Location {
                            segment: number,
                            offset: (body_start + 1 + 8) as u64,
                            len: bytes.len() as u32,
                        };
                        self.entries.split_off(&index);
                        self.entries.insert(index, at);
                    }
                    self.apply(record);
                }
                None => return end(offset, Some("a record of an unknown kind"), last_index),
            }
            offset = body_start + len;
        }
    }

    fn apply(&mut self, record: Record<'_>) {
        match record {
            Record::Entry { .. } => {}
            Record::Truncate { since } => {
                self.entries.split_off(&since);
            }
            Record::Purge { index, log_id } => {
                self.entries = self.entries.split_off(&(index.saturating_add(1)));
                self.pointers.last_purged = Some((index, log_id.to_vec()));
            }
            Record::Vote(bytes) => self.pointers.vote = Some(bytes.to_vec()),
            Record::Committed(bytes) => self.pointers.committed = Some(bytes.to_vec()),
        }
    }
}

fn encode(record: &Record<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    match record {
        Record::Entry { index, bytes } => {
            body.push(ENTRY);
            body.extend_from_slice(&index.to_le_bytes());
            body.extend_from_slice(bytes);
        }
        Record::Truncate { since } => {
            body.push(TRUNCATE);
            body.extend_from_slice(&since.to_le_bytes());
        }
        Record::Purge { index, log_id } => {
            body.push(PURGE);
            body.extend_from_slice(&index.to_le_bytes());
            body.extend_from_slice(log_id);
        }
        Record::Vote(bytes) => {
            body.push(VOTE);
            body.extend_from_slice(bytes);
        }
        Record::Committed(bytes) => {
            body.push(COMMITTED);
            body.extend_from_slice(bytes);
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode(body: &[u8]) -> Option<Record<'_>> {
    let (&kind, rest) = body.split_first()?;
    let index =
        |rest: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)) };
    Some(match kind {
        ENTRY => Record::Entry {
            index: index(rest)?,
            bytes: &rest[8..],
        },
        TRUNCATE => Record::Truncate {
            since: index(rest)?,
        },
        PURGE => Record::Purge {
            index: index(rest)?,
            log_id: &rest[8..],
        },
        VOTE => Record::Vote(rest),
        COMMITTED => Record::Committed(rest),
        _ => return None,
    })
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.wal"))
}

/// Gives `file` its blocks up front, so that appends change no file size or block map (whose
/// journaling each sync would otherwise wait for). A file system without `fallocate` gets a
/// sparse file of that size instead: slower syncs, the same log.
fn allocate(file: &File, capacity: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, capacity) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => file.set_len(capacity),
        Err(errno) => Err(errno.into()),
    }
}

fn zero_from(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Makes a directory's entries (a new or deleted file) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
