//! Tests of the log's files: what a crash can leave behind, and what opening makes of it.

use std::io::Write;

use super::*;

fn entry(index: u64, bytes: &[u8]) -> Record<'_> {
    Record::Entry { index, bytes }
}

fn purge(index: u64, log_id: &[u8]) -> Record<'_> {
    Record::Purge { index, log_id }
}

/// The live entries' bytes after opening `dir`, by index.
fn entries_in(dir: &Path, segment_bytes: u64) -> BTreeMap<u64, Vec<u8>> {
    let (_, recovered) = Wal::open(dir, segment_bytes).unwrap();
    recovered
        .entries
        .iter()
        .map(|(index, at)| (*index, read_at(&recovered.files[&at.segment], *at).unwrap()))
        .collect()
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap().path())
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    paths.remove(0)
}

#[test]
fn records_replay_in_order_an_entry_replacing_the_log_from_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    wal.write(&[entry(1, b"a"), entry(2, b"b"), entry(3, b"c")], true)
        .unwrap();
    wal.write(&[entry(2, b"B")], true).unwrap();
    wal.write(&[Record::Vote(b"v1"), Record::Committed(b"c1")], true)
        .unwrap();
    wal.write(
        &[
            entry(3, b"C"),
            entry(4, b"D"),
            Record::Truncate { since: 4 },
        ],
        true,
    )
    .unwrap();
    wal.write(&[purge(1, b"p1")], true).unwrap();
    drop(wal);
    let expected = BTreeMap::from([(2, b"B".to_vec()), (3, b"C".to_vec())]);
    assert_eq!(entries_in(dir.path(), SEGMENT_BYTES), expected);
    let (_, recovered) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    let pointers = Pointers {
        vote: Some(b"v1".to_vec()),
        committed: Some(b"c1".to_vec()),
        last_purged: Some((1, b"p1".to_vec())),
    };
    assert_eq!(recovered.pointers, pointers);
}

#[test]
fn a_torn_write_at_the_end_is_cut_and_never_comes_back_behind_a_newer_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    wal.write(&[entry(1, b"first")], true).unwrap();
    let end = wal.position;
    drop(wal);
    // A crash during a batch of two records: the first torn (its checksum fails), the second
    // whole. Neither was acknowledged.
    let mut torn = encode(&entry(2, b"torn"));
    let last = torn.len() - 1;
    torn[last] ^= 0xff;
    let whole = encode(&entry(3, b"whole"));
    let segment = only_segment(dir.path());
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&torn, end).unwrap();
    file.write_all_at(&whole, end + torn.len() as u64).unwrap();
    drop(file);
    assert_eq!(
        entries_in(dir.path(), SEGMENT_BYTES),
        BTreeMap::from([(1, b"first".to_vec())])
    );
    // A record written where the torn one began, of the same length, ends exactly where the
    // whole one of the crashed batch began: it must have been zeroed.
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(wal.position, end);
    wal.write(&[entry(2, b"new!")], true).unwrap();
    drop(wal);
    assert_eq!(
        entries_in(dir.path(), SEGMENT_BYTES),
        BTreeMap::from([(1, b"first".to_vec()), (2, b"new!".to_vec())])
    );
}

#[test]
fn a_write_cut_short_by_a_crash_ends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    wal.write(&[entry(1, b"kept")], true).unwrap();
    let end = wal.position;
    drop(wal);
    // Only the first bytes of a record reached the disk, running up to the segment's end.
    let record = encode(&entry(2, &[7; 5000]));
    let segment = only_segment(dir.path());
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&record[..4096 - end as usize], end)
        .unwrap();
    drop(file);
    assert_eq!(
        entries_in(dir.path(), 4096),
        BTreeMap::from([(1, b"kept".to_vec())])
    );
}

#[test]
fn damage_before_the_last_segment_fails_to_open_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    for index in 1..=10 {
        wal.write(&[entry(index, &[index as u8; 1000])], true)
            .unwrap();
    }
    drop(wal);
    let first = segment_path(dir.path(), 1);
    let file = OpenOptions::new().write(true).open(&first).unwrap();
    file.write_all_at(b"rot", 100).unwrap();
    drop(file);
    let err = Wal::open(dir.path(), 4096).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("00000000000000000001.wal") && shown.contains("checksum"),
        "{shown}"
    );
}

#[test]
fn segments_roll_over_keep_the_pointers_and_are_deleted_once_purged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    wal.write(&[Record::Vote(b"vote")], true).unwrap();
    for index in 1..=20 {
        wal.write(&[entry(index, &[index as u8; 1000])], true)
            .unwrap();
    }
    // A record bigger than a segment gets a segment of its own size.
    wal.write(&[entry(21, &[21; 10_000])], true).unwrap();
    let segments = wal.segments.len();
    assert!(segments >= 6, "{segments} segments");
    wal.write(&[purge(15, b"p15")], true).unwrap();
    let deleted = wal.delete_purged(15).unwrap();
    assert!(!deleted.is_empty());
    assert!(deleted.windows(2).all(|pair| pair[1] == pair[0] + 1));
    drop(wal);
    let live = entries_in(dir.path(), 4096);
    assert_eq!(
        live.keys().copied().collect::<Vec<_>>(),
        (16..=21).collect::<Vec<_>>()
    );
    assert_eq!(live[&21], vec![21; 10_000]);
    // The vote was written only in the first segment, which is gone: the later segments
    // carry it in their headers.
    let (_, recovered) = Wal::open(dir.path(), 4096).unwrap();
    assert_eq!(recovered.pointers.vote.as_deref(), Some(&b"vote"[..]));
    assert_eq!(recovered.pointers.last_purged, Some((15, b"p15".to_vec())));
}

#[test]
fn a_truncate_is_never_deleted_while_the_entries_it_removed_remain() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    // Entries 1..=3 fill the first segment, so the truncate of 2.. starts the second, which
    // then fills with a vote: it holds no entry, but must outlive the first segment.
    for index in 1..=3 {
        wal.write(&[entry(index, &[1; 1345])], true).unwrap();
    }
    assert_eq!(wal.active, 1);
    wal.write(&[Record::Truncate { since: 2 }], true).unwrap();
    assert_eq!(wal.active, 2);
    wal.write(&[Record::Vote(&[b'v'; 4060])], true).unwrap();
    wal.write(&[purge(1, b"p1")], true).unwrap();
    assert_eq!(wal.active, 3);
    assert_eq!(wal.delete_purged(1).unwrap(), Vec::<u64>::new());
    drop(wal);
    assert_eq!(entries_in(dir.path(), 4096), BTreeMap::new());
}

#[test]
fn a_segment_left_without_its_header_by_a_crash_gets_it_before_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    wal.write(&[Record::Vote(b"vote"), entry(1, b"a")], true)
        .unwrap();
    drop(wal);
    // A crash while the next segment was being started: allocated, its header not written.
    let next = segment_path(dir.path(), 2);
    let file = File::create(&next).unwrap();
    file.set_len(4096).unwrap();
    drop(file);
    let (mut wal, _) = Wal::open(dir.path(), 4096).unwrap();
    assert_eq!(wal.active, 2);
    wal.write(&[entry(2, b"b"), purge(1, b"p1")], true).unwrap();
    assert_eq!(wal.delete_purged(1).unwrap(), [1]);
    drop(wal);
    // The first segment, the only one that had the vote, is gone; the second has it.
    let (_, recovered) = Wal::open(dir.path(), 4096).unwrap();
    assert_eq!(recovered.pointers.vote.as_deref(), Some(&b"vote"[..]));
    assert_eq!(
        entries_in(dir.path(), 4096),
        BTreeMap::from([(2, b"b".to_vec())])
    );
}

#[test]
fn a_stray_file_in_the_directory_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("notes.txt"))
        .unwrap()
        .write_all(b"hello")
        .unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT_BYTES).unwrap();
    wal.write(&[entry(1, b"a")], true).unwrap();
    drop(wal);
    assert_eq!(entries_in(dir.path(), SEGMENT_BYTES).len(), 1);
}
