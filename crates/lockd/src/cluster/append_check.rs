//! The shape an AppendEntries must have before it reaches openraft: [`check_append_entries`].
//!
//! openraft 0.9 trusts its network. Its follower checks that `prev_log_id` is in the local log,
//! then appends the entries as they come, asserting only in debug builds that they follow on
//! from `prev_log_id`. An AppendEntries whose indexes have a gap therefore panics `RaftCore` in a
//! debug build, and in a release build is written to the log store with a hole in it, which the
//! store refuses to open again ("'LogIndex(3)' violates ..."). A real leader never sends one,
//! so the peer server refuses the message (and closes the connection) before openraft sees it.
//! This module reads the message and nothing else: no log, no socket.

use openraft::entry::RaftEntry;
use openraft::type_config::alias::{CommittedLeaderIdOf, LogIdOf};
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::RaftTypeConfig;

use openraft::raft::AppendEntriesRequest;

/// Why an AppendEntries cannot have come from a correct leader.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedAppend {
    /// An entry's index is not one more than the one before it (or than `prev_log_id`'s).
    #[error("entry {position} has index {found}, where {expected} follows on")]
    Gap {
        /// The entry's position in the message, from 0.
        position: usize,
        /// The index that follows on from the entry before.
        expected: u64,
        /// The entry's index.
        found: u64,
    },
    /// An entry's term is below that of the entry before it: Raft terms never go down along a
    /// log.
    #[error("entry {position} has term {found}, below the term {before} before it")]
    TermGoesDown {
        /// The entry's position in the message, from 0.
        position: usize,
        /// The term of the entry (or `prev_log_id`) before it.
        before: u64,
        /// The entry's term.
        found: u64,
    },
    /// An entry's term is after the sender's own: no leader proposes in a term it has not
    /// reached.
    #[error("entry {position} has term {found}, after the sender's term {vote}")]
    TermAfterVote {
        /// The entry's position in the message, from 0.
        position: usize,
        /// The term of the sender's vote.
        vote: u64,
        /// The entry's term.
        found: u64,
    },
}

/// Checks that `rpc`'s entries follow on from its `prev_log_id` and from each other: consecutive
/// indexes, terms that never go down, and none after the sender's own term. An empty message (a
/// heartbeat) always passes.
///
/// For openraft's default (`leader_id_adv`) leader ids, which lockd uses: a log id's committed
/// leader id is a whole leader id, whose term this reads.
pub fn check_append_entries<C>(rpc: &AppendEntriesRequest<C>) -> Result<(), MalformedAppend>
where
    C: RaftTypeConfig<Term = u64>,
    CommittedLeaderIdOf<C>: RaftLeaderId<Term = u64>,
{
    let vote = rpc.vote.leader_id().term();
    let mut before: Option<LogIdOf<C>> = rpc.prev_log_id.clone();
    for (position, entry) in rpc.entries.iter().enumerate() {
        let log_id = entry.log_id();
        // openraft's first entry has index 0, after no `prev_log_id` at all.
        let expected = before.as_ref().map_or(0, |before| before.index + 1);
        if log_id.index != expected {
            return Err(MalformedAppend::Gap {
                position,
                expected,
                found: log_id.index,
            });
        }
        let term = log_id.leader_id.term();
        if let Some(before) = &before {
            if term < before.leader_id.term() {
                return Err(MalformedAppend::TermGoesDown {
                    position,
                    before: before.leader_id.term(),
                    found: term,
                });
            }
        }
        if term > vote {
            return Err(MalformedAppend::TermAfterVote {
                position,
                vote,
                found: term,
            });
        }
        before = Some(log_id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::type_config::alias::{EntryOf, VoteOf};
    use openraft::EntryPayload;

    use super::*;
    use crate::cluster::types::TypeConfig;

    fn log_id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        openraft::testing::log_id::<TypeConfig>(term, 1, index)
    }

    fn request(
        vote_term: u64,
        prev: Option<(u64, u64)>,
        entries: &[(u64, u64)],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: VoteOf::<TypeConfig>::new_committed(vote_term, 1),
            prev_log_id: prev.map(|(term, index)| log_id(term, index)),
            entries: entries
                .iter()
                .map(|&(term, index)| EntryOf::<TypeConfig> {
                    log_id: log_id(term, index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: None,
        }
    }

    #[test]
    fn entries_that_follow_on_pass() {
        for rpc in [
            request(3, Some((2, 7)), &[]),
            request(3, None, &[(0, 0), (1, 1), (1, 2)]),
            request(3, Some((2, 7)), &[(2, 8), (3, 9), (3, 10)]),
        ] {
            assert_eq!(check_append_entries(&rpc), Ok(()), "{rpc:?}");
        }
    }

    #[test]
    fn a_gap_after_prev_log_id_or_between_entries_is_refused() {
        let gap_after_prev = request(3, Some((2, 7)), &[(3, 9)]);
        assert_eq!(
            check_append_entries(&gap_after_prev),
            Err(MalformedAppend::Gap {
                position: 0,
                expected: 8,
                found: 9
            })
        );
        let gap_between = request(3, Some((2, 7)), &[(3, 8), (3, 10)]);
        assert_eq!(
            check_append_entries(&gap_between),
            Err(MalformedAppend::Gap {
                position: 1,
                expected: 9,
                found: 10
            })
        );
        let from_nothing = request(3, None, &[(1, 1)]);
        assert!(matches!(
            check_append_entries(&from_nothing),
            Err(MalformedAppend::Gap { expected: 0, .. })
        ));
        let going_back = request(3, Some((2, 7)), &[(3, 7)]);
        assert!(matches!(
            check_append_entries(&going_back),
            Err(MalformedAppend::Gap { expected: 8, .. })
        ));
    }

    #[test]
    fn terms_that_go_down_or_pass_the_senders_are_refused() {
        let down = request(3, Some((2, 7)), &[(2, 8), (1, 9)]);
        assert_eq!(
            check_append_entries(&down),
            Err(MalformedAppend::TermGoesDown {
                position: 1,
                before: 2,
                found: 1
            })
        );
        let below_prev = request(3, Some((2, 7)), &[(1, 8)]);
        assert!(matches!(
            check_append_entries(&below_prev),
            Err(MalformedAppend::TermGoesDown { position: 0, .. })
        ));
        let ahead = request(3, Some((2, 7)), &[(4, 8)]);
        assert_eq!(
            check_append_entries(&ahead),
            Err(MalformedAppend::TermAfterVote {
                position: 0,
                vote: 3,
                found: 4
            })
        );
    }
}
