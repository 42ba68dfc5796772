//! Leader election through the library and the CLI: `campaign`, `observe`, `resign`, and the
//! safety of it when leaders die. Every time is read from this test's one clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockctl::{Client, ErrorCode, FenceToken, Leader};
use tokio::sync::mpsc;

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::{Running, Server, PATIENCE};

fn leader_of(value: &str, epoch: FenceToken, client: &Client) -> Option<Leader> {
    Some(Leader {
        value: Some(value.to_owned()),
        epoch,
        session: client.session().unwrap(),
    })
}

#[tokio::test]
async fn election_campaign_observe_and_resign_through_the_library() {
    let server = Server::start();
    let (a, b, watcher) = (
        server.client().await,
        server.client().await,
        server.client().await,
    );
    let mut leaders = watcher.election("sched").observe().await.unwrap();
    assert_eq!(leaders.next().await.unwrap(), None, "nobody leads yet");

    let first = a.election("sched").campaign("10.0.0.1:80").await.unwrap();
    assert_eq!(first.value(), "10.0.0.1:80");
    assert_eq!(
        leaders.next().await.unwrap(),
        leader_of("10.0.0.1:80", first.epoch(), &a)
    );
    // A second candidate waits; trying once fails with `timeout`.
    let err = b
        .election("sched")
        .campaign_within("10.0.0.2:80", Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Timeout));
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.election("sched").campaign("10.0.0.2:80").await }
    });

    // Resigning leaves no leader (the value went with the hold), then the next one leads with
    // a larger epoch and its own value.
    let old_epoch = first.epoch();
    first.resign().await.unwrap();
    assert_eq!(leaders.next().await.unwrap(), None);
    let second = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(second.epoch() > old_epoch);
    assert_eq!(
        leaders.next().await.unwrap(),
        leader_of("10.0.0.2:80", second.epoch(), &b)
    );
    // A second observer starts from the current leader.
    let mut late = watcher.election("sched").observe().await.unwrap();
    assert_eq!(
        late.next().await.unwrap(),
        leader_of("10.0.0.2:80", second.epoch(), &b)
    );
    late.unwatch().await.unwrap();
    drop(second);
    assert_eq!(
        leaders.next().await.unwrap(),
        None,
        "a dropped leadership resigns"
    );
}

/// What the candidates and observers of the kill test report, each with the instant it was
/// seen on this test's clock.
#[derive(Debug)]
enum Report {
    Elected {
        candidate: usize,
        epoch: FenceToken,
        at: Instant,
    },
    Lost {
        candidate: usize,
        at: Instant,
    },
}

/// Every leader each observer has seen, with when.
type Seen = Arc<Mutex<Vec<Vec<(Option<Leader>, Instant)>>>>;

/// Waits until every observer has seen a leader with `epoch`; returns when the last one did.
async fn all_observe(seen: &Seen, epoch: FenceToken) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let latest = {
            let seen = seen.lock().unwrap();
            seen.iter()
                .map(|leaders| {
                    leaders
                        .iter()
                        .find(|(leader, _)| leader.as_ref().is_some_and(|l| l.epoch == epoch))
                        .map(|(_, at)| *at)
                })
                .collect::<Option<Vec<Instant>>>()
                .and_then(|ats| ats.into_iter().max())
        };
        if let Some(at) = latest {
            return at;
        }
        assert!(
            Instant::now() < deadline,
            "not every observer saw the leader of epoch {epoch}: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_report(reports: &mut mpsc::UnboundedReceiver<Report>, what: &str) -> Report {
    tokio::time::timeout(PATIENCE, reports.recv())
        .await
        .unwrap_or_else(|_| panic!("no report of {what} within {PATIENCE:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_three_candidates_with_leaders_killed_never_overlap_and_observers_follow() {
    const LEASE: Duration = Duration::from_millis(1_000);
    let server = Server::start_with_short_leases();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();

    // Three observers, each reduced to the leaders it saw and when.
    let seen: Seen = Arc::new(Mutex::new(vec![Vec::new(); 3]));
    let mut observers = Vec::new();
    for index in 0..3 {
        let client = server.client().await;
        let mut leaders = client.election("sched").observe().await.unwrap();
        let seen = Arc::clone(&seen);
        observers.push(tokio::spawn(async move {
            while let Ok(leader) = leaders.next().await {
                seen.lock().unwrap()[index].push((leader, Instant::now()));
            }
            drop(client);
        }));
    }

    // Three candidates, each behind a proxy that can kill its link.
    let mut proxies = Vec::new();
    let mut values = Vec::new();
    // Which candidate led when, on this clock: (candidate, epoch, elected, believed until).
    let mut terms: Vec<(usize, FenceToken, Instant, Option<Instant>)> = Vec::new();
    let mut epochs = [FenceToken(0); 3];
    for candidate in 0..3 {
        let proxy = FaultProxy::start(server.addr).await;
        let client = Client::builder(&proxy.addr().to_string())
            .lease(LEASE)
            .connect()
            .await
            .unwrap();
        let value = format!("node-{candidate}:8080");
        values.push(value.clone());
        let report = reports_tx.clone();
        tokio::spawn(async move {
            let leadership = client.election("sched").campaign(&value).await.unwrap();
            // Believes it leads from here...
            let _ = report.send(Report::Elected {
                candidate,
                epoch: leadership.epoch(),
                at: Instant::now(),
            });
            // ...until the guard says it lost (its local lease ran out, or the link ended).
            leadership.lost().await;
            let _ = report.send(Report::Lost {
                candidate,
                at: Instant::now(),
            });
            drop(leadership);
        });
        proxies.push(proxy);
        if candidate == 0 {
            // The others queue behind a known first leader.
            let Report::Elected {
                candidate,
                epoch,
                at,
            } = next_report(&mut reports, "the first leader").await
            else {
                panic!("the first report is not an election");
            };
            epochs[candidate] = epoch;
            terms.push((candidate, epoch, at, None));
        }
    }

    // Kill 1: the leader's link is blackholed, so its lease runs out on both sides. Kill 2: the
    // next leader's process dies (its connection ends); it believes nothing after that.
    let mut kills = Vec::new();
    for (round, mode) in [Mode::Blackhole, Mode::Drop].into_iter().enumerate() {
        let (victim, epoch, _, _) = *terms.last().unwrap();
        all_observe(&seen, epoch).await;
        let killed = Instant::now();
        proxies[victim].set_mode(mode);
        kills.push(killed);
        // The victim's loss and the next election, in whatever order they are reported.
        let mut next = None;
        let mut lost = None;
        while next.is_none() || lost.is_none() {
            match next_report(&mut reports, "the next leader and the old one's loss").await {
                Report::Elected {
                    candidate,
                    epoch,
                    at,
                } => {
                    epochs[candidate] = epoch;
                    next = Some((candidate, epoch, at));
                }
                Report::Lost { candidate, at } => {
                    assert_eq!(
                        candidate, victim,
                        "only the killed leader loses (round {round})"
                    );
                    lost = Some(at);
                }
            }
        }
        let lost = lost.unwrap();
        // A dead process believes nothing from its death on.
        let believed_until = if mode == Mode::Drop { killed } else { lost };
        terms.last_mut().unwrap().3 = Some(believed_until);
        let (candidate, epoch, elected) = next.unwrap();
        terms.push((candidate, epoch, elected, None));
        let observed = all_observe(&seen, epoch).await;
        eprintln!(
            "round {round} ({mode:?}): old leader lost its belief {:?} after the kill, the next \
             was elected {:?} after it, every observer saw it {:?} after it",
            believed_until - killed,
            elected - killed,
            observed - killed
        );
        // Within a lease of the leader's end: its expiry (a lease after the kill) or its
        // connection's end (at once).
        let allowed = if mode == Mode::Blackhole {
            LEASE * 2
        } else {
            LEASE
        };
        assert!(
            observed - killed < allowed,
            "the observers saw the new leader {:?} after the kill (round {round})",
            observed - killed
        );
    }

    // No two candidates ever believed they led at the same time.
    for pair in terms.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let until = before.3.expect("every leader but the last ended");
        assert!(
            until < after.2,
            "candidate {} believed it led until {until:?}, after candidate {} was elected at {:?}",
            before.0,
            after.0,
            after.2
        );
        assert!(after.1 > before.1, "epochs grow: {terms:?}");
    }
    // Every observer saw the same leaders in the same order, each with its own value (never a
    // new epoch with an old value), and no leader twice.
    let seen = seen.lock().unwrap().clone();
    let leaders: Vec<Vec<Leader>> = seen
        .iter()
        .map(|leaders| leaders.iter().filter_map(|(l, _)| l.clone()).collect())
        .collect();
    for observed in &leaders {
        assert_eq!(observed, &leaders[0], "observers disagree: {leaders:?}");
        for leader in observed {
            let candidate = epochs.iter().position(|epoch| *epoch == leader.epoch);
            let candidate = candidate.unwrap_or_else(|| panic!("unknown epoch: {leader:?}"));
            assert_eq!(
                leader.value.as_ref(),
                Some(&values[candidate]),
                "{leader:?}"
            );
        }
    }
    assert_eq!(leaders[0].len(), 3, "{leaders:?}");
    drop(proxies);
    drop(server);
    for observer in observers {
        let _ = tokio::time::timeout(PATIENCE, observer).await;
    }
}

/// The epoch a `lockctl elect` job printed as its last line, `leading $LOCKD_TOKEN`.
fn epoch_of(running: &Running) -> String {
    let line = running.seen.last().expect("the job printed its line");
    line.trim_start_matches("leading ").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn lockctl_elect_runs_the_command_while_leading_and_observe_prints_each_leader() {
    let mut server = Server::start();
    let addr = server.addr_string();
    let mut observe = Running::spawn(&addr, &["observe", "sched"]);
    observe.wait_for_line("no leader").await;

    let job = "echo \"leading $LOCKD_TOKEN\"; while :; do sleep 0.05; done";
    let mut a = Running::spawn(&addr, &["elect", "-c", job, "sched", "node-a"]);
    a.wait_for_line("leading ").await;
    let epoch_a = epoch_of(&a);
    observe
        .wait_for_line(&format!("leader epoch={epoch_a} value=node-a"))
        .await;

    let mut b = Running::spawn(&addr, &["elect", "-c", job, "sched", "node-b"]);
    // The second candidate waits in line while the first leads.
    let deadline = Instant::now() + PATIENCE;
    let observer = server.client().await;
    while observer.status(Some("sched")).await.unwrap()[0]
        .waiters
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the second candidate never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The leader's lockctl dies: its watchdog stops the command, lockd frees the lock.
    a.signal("KILL");
    let _ = a.finish().await;
    b.wait_for_line("leading ").await;
    let epoch_b = epoch_of(&b);
    assert!(epoch_b.parse::<u64>().unwrap() > epoch_a.parse::<u64>().unwrap());
    observe.wait_for_line("no leader").await;
    observe
        .wait_for_line(&format!("leader epoch={epoch_b} value=node-b"))
        .await;

    // lockd goes away: the leader's command is stopped and lockctl says why.
    tokio::task::block_in_place(|| server.stop());
    let (code, _, stderr) = b.finish().await;
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stderr.contains("lockctl: leading sched as \"node-b\""),
        "{stderr}"
    );
    assert!(stderr.contains("lost leadership of sched"), "{stderr}");
    let (code, lines, stderr) = observe.finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("observing sched has ended"), "{stderr}");
    assert_eq!(lines.first().map(String::as_str), Some("no leader"));
}
