//! docs/protocol.md cannot drift from the server: every request and reply example in it is
//! replayed against a fresh lockd (issue 18, point 7).
//!
//! Each example block is marked in the doc with `<!-- replay: NAME -->` (hidden when rendered).
//! NAME picks a scenario below: the server's flags, what other sessions do before and between
//! the doc's lines, and which connection each request id belongs to. `NAME, continued` goes on
//! with the previous block's server and connections. `skip: REASON` is allowed only for the
//! cluster's examples. A block without a marker fails the test, so a new example cannot be
//! added without being replayed.
//!
//! `>` lines are sent as they stand (`xxx…257 bytes…xxx` becomes 257 `x`); each `<` line must
//! equal the next frame on the connection that sent its id, except that ages (`held_ms`,
//! `waited_ms`, `delayed_ms`), `peer` addresses and the version in `server` are matched as
//! placeholders. Session ids and tokens are matched exactly: each scenario starts the server
//! fresh, so they are those the doc shows.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::{Conn, Deadline, Lockd};

/// One fenced example in the doc.
#[derive(Debug)]
struct Block {
    /// Its line in docs/protocol.md (1-based), for failure messages.
    line: usize,
    marker: String,
    lines: Vec<DocLine>,
}

#[derive(Debug)]
enum DocLine {
    /// A `>` line: sent as it stands.
    Send(String),
    /// A `<` line: the frame expected.
    Expect(String),
}

const DOC: &str = include_str!("../../../../docs/protocol.md");

/// The example blocks of docs/protocol.md, with their markers.
fn blocks() -> Vec<Block> {
    let lines: Vec<&str> = DOC.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if !lines[index].starts_with("```") {
            index += 1;
            continue;
        }
        let start = index;
        let end = (start + 1..lines.len())
            .find(|&i| lines[i].starts_with("```"))
            .unwrap_or_else(|| panic!("docs/protocol.md:{}: unclosed block", start + 1));
        index = end + 1;
        let body = &lines[start + 1..end];
        let doc_lines = if body.first().is_some_and(|l| l.starts_with("$ nc ")) {
            // A session typed into nc: requests and replies alternate, without > and <.
            body[1..]
                .iter()
                .enumerate()
                .map(|(i, line)| match i % 2 {
                    0 => DocLine::Send((*line).to_owned()),
                    _ => DocLine::Expect((*line).to_owned()),
                })
                .collect()
        } else {
            body.iter()
                .filter_map(|line| {
                    if let Some(sent) = line.strip_prefix("> ") {
                        Some(DocLine::Send(sent.to_owned()))
                    } else {
                        line.strip_prefix("< ")
                            .map(|reply| DocLine::Expect(reply.to_owned()))
                    }
                })
                .collect::<Vec<_>>()
        };
        if doc_lines.is_empty() {
            continue;
        }
        let marker = start
            .checked_sub(1)
            .and_then(|before| lines[before].strip_prefix("<!-- replay: "))
            .and_then(|rest| rest.strip_suffix(" -->"))
            .unwrap_or_else(|| {
                panic!(
                    "docs/protocol.md:{}: an example without `<!-- replay: NAME -->` before it; \
                     add a scenario to crates/lockd/tests/it/docs.rs",
                    start + 1
                )
            });
        blocks.push(Block {
            line: start + 1,
            marker: marker.to_owned(),
            lines: doc_lines,
        });
    }
    blocks
}

/// A fresh lockd and the connections of one scenario, by name; `doc` is the one whose lines
/// the doc shows unless the scenario routes an id elsewhere.
struct Replay {
    lockd: Lockd,
    conns: HashMap<&'static str, Conn>,
    /// Which connection sends each request id of the current block (default `doc`).
    routes: HashMap<u64, &'static str>,
    /// Who sent the last `>` line: where a reply with `"id":null` goes.
    last_sender: &'static str,
    _files: tempfile::TempDir,
}

impl Replay {
    async fn start(flags: &[&str], files: tempfile::TempDir) -> Replay {
        Replay {
            lockd: Lockd::start(flags),
            conns: HashMap::new(),
            routes: HashMap::new(),
            last_sender: "doc",
            _files: files,
        }
    }

    /// Opens connection `name` now, so that its session id comes before those opened later.
    async fn open(&mut self, name: &'static str) {
        let conn = self.lockd.connect().await;
        self.conns.insert(name, conn);
    }

    /// Opens `name` and pings on it, so that the server has its session before the next one.
    async fn open_in_order(&mut self, name: &'static str) {
        self.open(name).await;
        let pong = self.call(name, json!({"id": 900, "op": "ping"})).await;
        assert_eq!(pong["ok"], true, "{pong}");
    }

    fn conn(&mut self, name: &'static str) -> &mut Conn {
        self.conns
            .get_mut(name)
            .unwrap_or_else(|| panic!("the scenario never opened {name:?}"))
    }

    /// A request of the scenario's own (not shown in the doc) and its next frame.
    async fn call(&mut self, name: &'static str, frame: Value) -> Value {
        self.conn(name).call(frame).await
    }

    /// Holds `resource` on `name` (it must be free); returns the token.
    async fn hold(&mut self, name: &'static str, id: u64, resource: &str, mode: &str) -> u64 {
        self.conn(name).lock(id, resource, mode).await
    }

    /// Opens session 1 before any other and has it hold each of `resources`.
    async fn session_1_holds(&mut self, resources: &[&str]) {
        self.open_in_order("session 1").await;
        for (id, resource) in (1..).zip(resources) {
            self.hold("session 1", id, resource, "exclusive").await;
        }
    }

    /// Sends an acquire on `name` that must wait, and reads its `queued` event.
    async fn wait_for(&mut self, name: &'static str, id: u64, resource: &str) {
        let queued = self
            .call(
                name,
                json!({"id": id, "op": "acquire", "resource": resource}),
            )
            .await;
        assert_eq!(queued["event"], "queued", "{queued}");
    }

    /// Waits until nobody holds `resource` (a silent session's lease ran out), asking on `name`.
    async fn until_free(&mut self, name: &'static str, resource: &str) {
        let deadline = Deadline::new(format!("{resource} freed by an expired lease"));
        loop {
            let status = self
                .call(
                    name,
                    json!({"id": 901, "op": "status", "resource": resource}),
                )
                .await;
            if status["resources"][0]["holders"] == json!([]) {
                return;
            }
            deadline.tick(&status).await;
        }
    }

    /// Runs one doc line.
    async fn play(&mut self, block: &Block, line: &DocLine) {
        match line {
            DocLine::Send(text) => {
                let sender = sent_id(text)
                    .and_then(|id| self.routes.get(&id).copied())
                    .unwrap_or("doc");
                self.last_sender = sender;
                if sender == "doc" && !self.conns.contains_key("doc") {
                    // Opened at its first line, after every session the scenario opened.
                    self.open("doc").await;
                }
                let mut bytes = expand(text).into_bytes();
                bytes.push(b'\n');
                self.conn(sender).send_raw(&bytes).await;
            }
            DocLine::Expect(text) => {
                let expected: Value = serde_json::from_str(text).unwrap_or_else(|err| {
                    panic!("docs/protocol.md:{}: not JSON: {text}: {err}", block.line)
                });
                let receiver = expected["id"]
                    .as_u64()
                    .and_then(|id| self.routes.get(&id).copied())
                    .unwrap_or(self.last_sender);
                let actual = self.conn(receiver).recv().await;
                assert!(
                    matches(&expected, &actual, None),
                    "docs/protocol.md:{} ({}): the doc shows\n  {expected}\nlockd sent\n  {actual}",
                    block.line,
                    block.marker
                );
            }
        }
    }
}

/// The `id` of a request line, if it has a numeric one.
fn sent_id(text: &str) -> Option<u64> {
    serde_json::from_str::<Value>(text).ok()?["id"].as_u64()
}

/// `xxx…257 bytes…xxx` as the 257 bytes it stands for.
fn expand(text: &str) -> String {
    let Some((before, rest)) = text.split_once('…') else {
        return text.to_owned();
    };
    let (count, after) = rest.split_once('…').expect("a closing …");
    let count: usize = count
        .strip_suffix(" bytes")
        .and_then(|n| n.parse().ok())
        .expect("…N bytes…");
    format!(
        "{}{}{}",
        before.trim_end_matches('x'),
        "x".repeat(count),
        after.trim_start_matches('x')
    )
}

/// Whether `actual` is what the doc shows, with its placeholders (see the module docs).
fn matches(expected: &Value, actual: &Value, key: Option<&str>) -> bool {
    match (key, expected, actual) {
        (Some("held_ms" | "waited_ms" | "delayed_ms"), Value::Number(_), Value::Number(_))
        | (Some("peer"), Value::String(_), Value::String(_)) => true,
        (Some("server"), Value::String(_), Value::String(server)) => {
            server == &format!("lockd {}", env!("CARGO_PKG_VERSION"))
        }
        (_, Value::Object(expected), Value::Object(actual)) => {
            expected.len() == actual.len()
                && expected.iter().all(|(name, value)| {
                    actual
                        .get(name)
                        .is_some_and(|actual| matches(value, actual, Some(name)))
                })
        }
        (_, Value::Array(expected), Value::Array(actual)) => {
            expected.len() == actual.len()
                && expected
                    .iter()
                    .zip(actual)
                    .all(|(expected, actual)| matches(expected, actual, None))
        }
        _ => expected == actual,
    }
}

/// Starts scenario `name`: the server, and everything before its first block.
async fn start(name: &str) -> Replay {
    let files = tempfile::tempdir().unwrap();
    let mut flags: Vec<String> = Vec::new();
    match name {
        "wait-limit" => flags.extend(["--max-waits-per-session".into(), "1".into()]),
        "auth" => {
            let secret = files.path().join("secret");
            std::fs::write(&secret, "correct horse\n").unwrap();
            flags.extend([
                "--auth-token-file".into(),
                secret.to_str().unwrap().to_owned(),
            ]);
        }
        _ => {}
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut replay = Replay::start(&flags, files).await;
    match name {
        "hello-clamped" => replay.open_in_order("session 1").await,
        "acquire-wait" | "wait-runs-out" | "cancel" => replay.session_1_holds(&["file_A"]).await,
        "multi" => replay.session_1_holds(&["accounts/bob"]).await,
        "already-waits" => {
            replay.session_1_holds(&["file_A"]).await;
            replay.open("doc").await;
            replay.wait_for("doc", 16, "file_A").await;
        }
        "wait-limit" => {
            replay.session_1_holds(&["a", "b"]).await;
            replay.open("doc").await;
            replay.wait_for("doc", 1, "a").await;
        }
        "deadlock" => {
            // Session 1 holds x and waits for y, which session 2 (the doc's) holds.
            replay.open_in_order("session 1").await;
            replay.hold("session 1", 1, "x", "exclusive").await;
            replay.open_in_order("doc").await;
            replay.hold("doc", 1, "y", "exclusive").await;
            replay.wait_for("session 1", 2, "y").await;
        }
        "lock-delay" | "status-lock-delay" => {
            // Session 1, with a 1 s lease, takes jobs/nightly with a 5 s lock-delay.
            replay.open_in_order("session 1").await;
            let hello = replay
                .call(
                    "session 1",
                    json!({"id": 1, "op": "hello", "lease_ms": 1000}),
                )
                .await;
            assert_eq!(hello["lease_ms"], 1000, "{hello}");
            if name == "lock-delay" {
                // The doc's first block is session 1's acquire.
                replay.routes.insert(2, "session 1");
            } else {
                replay.play_hidden_acquire_with_delay().await;
            }
        }
        "release" | "read" | "write" => {
            replay.open("doc").await;
            replay.hold("doc", 1, "file_A", "exclusive").await;
        }
        "write-refused" => {
            // Tokens 1 to 3 go by, then the doc's session holds cfg shared with token 4.
            replay.open("doc").await;
            for id in 1..=3 {
                let token = replay.hold("doc", id, "cfg", "exclusive").await;
                let released = replay
                    .call(
                        "doc",
                        json!({"id": 100 + id, "op": "release", "resource": "cfg", "token": token}),
                    )
                    .await;
                assert_eq!(released["ok"], true, "{released}");
            }
            assert_eq!(replay.hold("doc", 4, "cfg", "shared").await, 4);
        }
        "validate" => {
            replay.open_in_order("session 1").await;
            let token = replay.hold("session 1", 1, "file_A", "exclusive").await;
            let released = replay
                .call(
                    "session 1",
                    json!({"id": 2, "op": "release", "resource": "file_A", "token": token}),
                )
                .await;
            assert_eq!(released["ok"], true, "{released}");
            replay.open("doc").await;
            assert_eq!(replay.hold("doc", 1, "file_A", "exclusive").await, 2);
        }
        "status" => {
            // Session 1 (backup@host1) holds file_A, session 2 waits; a third session asks.
            replay.open_in_order("session 1").await;
            let hello = json!({"id": 1, "op": "hello", "client": "backup@host1"});
            replay.call("session 1", hello).await;
            replay.hold("session 1", 2, "file_A", "exclusive").await;
            replay.open_in_order("session 2").await;
            replay.wait_for("session 2", 1, "file_A").await;
        }
        "semaphore" | "status-semaphore" => {
            // Session 1 holds 3 of the 4 permits of exports (and for status, session 2 waits
            // for 2 of them, session 3 for 1).
            replay.open_in_order("session 1").await;
            let acquire = |permits: u64| {
                json!({"id": 1, "op": "acquire", "resource": "exports", "permits": permits,
                       "limit": 4})
            };
            let granted = replay.call("session 1", acquire(3)).await;
            assert_eq!(granted["permits"], 3, "{granted}");
            if name == "status-semaphore" {
                for (session, permits) in [("session 2", 2), ("session 3", 1)] {
                    replay.open_in_order(session).await;
                    let queued = replay.call(session, acquire(permits)).await;
                    assert_eq!(queued["event"], "queued", "{queued}");
                }
            }
        }
        "watch" => {
            // Session 1 holds cfg; session 2 will wait for it; the doc's session is the third.
            replay.session_1_holds(&["cfg"]).await;
            replay.open_in_order("session 2").await;
        }
        "campaign" => {
            // Session 1 campaigns first and leads; the doc's session is the second.
            replay.open_in_order("session 1").await;
            let campaign = json!({"id": 1, "op": "acquire", "resource": "leader",
                                  "value": "10.0.0.1:8080"});
            let granted = replay.call("session 1", campaign).await;
            assert_eq!(granted["token"], 1, "{granted}");
        }
        "status-pages" => {
            // Session 1 holds file_A and jobs/nightly, session 2 waits for file_A.
            replay.session_1_holds(&["file_A", "jobs/nightly"]).await;
            replay.open_in_order("session 2").await;
            replay.wait_for("session 2", 1, "file_A").await;
        }
        _ => {}
    }
    replay
}

impl Replay {
    /// Session 1's acquire with a lock-delay, which the status example does not show.
    async fn play_hidden_acquire_with_delay(&mut self) {
        let granted = self
            .call(
                "session 1",
                json!({"id": 2, "op": "acquire", "resource": "jobs/nightly", "lock_delay_ms": 5000}),
            )
            .await;
        assert_eq!(granted["token"], 1, "{granted}");
    }
}

/// What scenario `name` does before line `line` of its block `block` (both from 0).
async fn before(name: &str, block: usize, line: usize, replay: &mut Replay) {
    match (name, block, line) {
        // "When session 1 releases file_A, session 2 receives:"
        ("acquire-wait", 1, 0) => {
            let frame = json!({"id": 2, "op": "release", "resource": "file_A", "token": 1});
            let released = replay.call("session 1", frame).await;
            assert_eq!(released["ok"], true, "{released}");
        }
        // Session 2 waits; session 1 falls silent until its lease runs out; a third session
        // tries once, and session 2 is granted after the lock-delay.
        ("lock-delay", 1, 0) => {
            replay.open_in_order("session 2").await;
            replay.wait_for("session 2", 2, "jobs/nightly").await;
            replay.open_in_order("session 3").await;
            replay.until_free("session 3", "jobs/nightly").await;
            replay.routes = HashMap::from([(1, "session 3"), (2, "session 2")]);
        }
        // Between the two statuses, the doc's session 2 waits and session 1's lease runs out.
        ("status-lock-delay", 0, 2) => {
            replay.wait_for("doc", 2, "jobs/nightly").await;
            replay.until_free("doc", "jobs/nightly").await;
        }
        // Session 1 writes, session 2 queues, session 1 releases, then session 2 asks for the
        // shortest lease and falls silent until it runs out.
        ("watch", 0, 3) => {
            let write =
                json!({"id": 2, "op": "write", "resource": "cfg", "token": 1, "value": "v2"});
            let written = replay.call("session 1", write).await;
            assert_eq!(written["ok"], true, "{written}");
        }
        ("watch", 0, 4) => replay.wait_for("session 2", 1, "cfg").await,
        ("watch", 0, 5) => {
            let frame = json!({"id": 3, "op": "release", "resource": "cfg", "token": 1});
            let released = replay.call("session 1", frame).await;
            assert_eq!(released["ok"], true, "{released}");
        }
        ("watch", 0, 8) => {
            let granted = replay.conn("session 2").recv().await;
            assert_eq!(granted["token"], 2, "{granted}");
            let hello = json!({"id": 2, "op": "hello", "lease_ms": 1000});
            let hello = replay.call("session 2", hello).await;
            assert_eq!(hello["lease_ms"], 1000, "{hello}");
        }
        // "When session 1 releases accounts/bob, this session gets both"
        ("multi", 1, 0) => {
            let frame = json!({"id": 2, "op": "release", "resource": "accounts/bob", "token": 1});
            let released = replay.call("session 1", frame).await;
            assert_eq!(released["ok"], true, "{released}");
        }
        // Session 1 resigns while the doc's session waits in line.
        ("campaign", 0, 6) => {
            let frame = json!({"id": 2, "op": "release", "resource": "leader", "token": 1});
            let released = replay.call("session 1", frame).await;
            assert_eq!(released["ok"], true, "{released}");
        }
        // A new connection, after the refused one was closed.
        ("auth", 1, 0) => replay.open("doc").await,
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_in_the_protocol_doc_is_what_lockd_answers() {
    let blocks = blocks();
    let skipped: Vec<_> = blocks
        .iter()
        .filter(|block| block.marker.starts_with("skip: "))
        .collect();
    // Only the cluster's examples (§11: not_leader, a resumed session, cluster_status).
    let cluster_section = DOC
        .lines()
        .position(|line| line.starts_with("## 11. Cluster mode"))
        .expect("docs/protocol.md has its cluster section")
        + 1;
    assert!(
        skipped
            .iter()
            .all(|b| b.marker == "skip: needs a cluster" && b.line > cluster_section),
        "only the cluster's examples may be skipped: {skipped:?}"
    );
    let mut current: Option<(String, usize, Replay)> = None;
    for block in blocks
        .iter()
        .filter(|block| !block.marker.starts_with("skip: "))
    {
        let (name, index) = match block.marker.strip_suffix(", continued") {
            Some(name) => {
                let (running, index, _) = current
                    .as_mut()
                    .unwrap_or_else(|| panic!("{}: nothing to continue", block.line));
                assert_eq!(running, name, "docs/protocol.md:{}", block.line);
                *index += 1;
                (name.to_owned(), *index)
            }
            None => {
                current = Some((block.marker.clone(), 0, start(&block.marker).await));
                (block.marker.clone(), 0)
            }
        };
        let (_, _, replay) = current.as_mut().expect("started above");
        for (line_index, line) in block.lines.iter().enumerate() {
            before(&name, index, line_index, replay).await;
            replay.play(block, line).await;
        }
    }
    // The parser found the examples (a change of format would make it find none).
    assert!(blocks.len() >= 25, "{} examples found", blocks.len());
}

/// README's "From anything else" example: the requests its `printf` sends and the replies
/// its `head` prints.
fn readme_bash_example() -> (Vec<String>, Vec<String>) {
    let readme = include_str!("../../../../README.md");
    let mut lines = readme
        .lines()
        .skip_while(|line| !line.starts_with("$ exec 3<>/dev/tcp/"));
    let printf = lines
        .find(|line| line.starts_with("$ printf "))
        .expect("README sends requests with printf");
    let requests = printf
        .split('\'')
        .filter(|piece| piece.starts_with('{'))
        .map(str::to_owned)
        .collect();
    let replies = lines
        .skip_while(|line| !line.starts_with("$ head "))
        .skip(1)
        .take_while(|line| !line.starts_with('$'))
        .map(str::to_owned)
        .collect();
    (requests, replies)
}

#[tokio::test]
async fn the_readme_bash_example_is_what_lockd_answers() {
    let (requests, replies) = readme_bash_example();
    assert_eq!(
        (requests.len(), replies.len()),
        (2, 2),
        "{requests:?} {replies:?}"
    );
    let lockd = Lockd::start(&[]);
    let mut conn = lockd.connect().await;
    for request in &requests {
        conn.send_raw(format!("{request}\n").as_bytes()).await;
    }
    for reply in &replies {
        let expected: Value = serde_json::from_str(reply).unwrap();
        let actual = conn.recv().await;
        assert!(
            matches(&expected, &actual, None),
            "README shows\n  {expected}\nlockd sent\n  {actual}"
        );
    }
}
