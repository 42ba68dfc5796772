//! The dashboard in a real browser: headless Chromium loads `/` from a lockd with held and
//! queued locks, runs the page's script (which fetches `/v1/locks`), and the DOM it leaves must
//! show who holds each lock and who waits, in queue order, hottest resource first.
//!
//! Needs Debian's chromium at /usr/bin/chromium (`.ci/run` installs it) and fails without it:
//! a dashboard test that passes because there was no browser would prove nothing.
//!
//! It also takes a screenshot, and keeps it at `$LOCKD_DASHBOARD_SCREENSHOT` when that is set:
//! `LOCKD_DASHBOARD_SCREENSHOT=$PWD/docs/dashboard.png cargo nextest run -p lockd dashboard`
//! refreshes the picture in the README.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admin::{hello, start_with_admin};
use crate::support::Conn;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take before the test fails.
const BROWSER_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_dashboard_shows_holders_and_queues_in_a_real_browser() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "this test needs Chromium at {CHROMIUM}: apt-get install chromium (CI installs it)"
    );
    let (lockd, admin) = start_with_admin(&[]);
    // Held and queued locks, as a deploy that hangs at 3 a.m. would leave them. The
    // connections stay open (and so the locks held) until the end of the test.
    let mut conns = Vec::new();
    let mut client = async |name: Option<&str>| {
        let mut conn = lockd.connect().await;
        if let Some(name) = name {
            hello(&mut conn, name).await;
        }
        conns.push(conn);
        conns.len() - 1
    };
    let runner7 = client(Some("deploy@ci-runner-7")).await;
    let runner9 = client(Some("deploy@ci-runner-9")).await;
    let ana = client(Some("hotfix@laptop-ana")).await;
    let migrate = client(Some("migrate@db-admin-1")).await;
    let report = client(Some("report@batch-3")).await;
    let audit = client(Some("audit@batch-4")).await;
    let cleanup = client(Some("cleanup@batch-1")).await;
    let anonymous = client(None).await;
    let exporter = client(Some("export@batch-5")).await;
    let scheduler = client(Some("scheduler@node-a")).await;
    lock(&mut conns[runner7], "deploy/prod", "exclusive").await;
    lock(&mut conns[migrate], "db/migrations", "exclusive").await;
    lock(&mut conns[report], "reports/nightly", "shared").await;
    lock(&mut conns[audit], "reports/nightly", "shared").await;
    lock(&mut conns[anonymous], "cache/warmup", "shared").await;
    queue(&mut conns[runner9], "deploy/prod", "exclusive", 1).await;
    queue(&mut conns[ana], "deploy/prod", "exclusive", 2).await;
    queue(&mut conns[cleanup], "reports/nightly", "exclusive", 1).await;
    // Two of the four permits of a semaphore.
    let reply = conns[exporter]
        .call(json!({"id": 1, "op": "acquire", "resource": "exports/s3", "permits": 2, "limit": 4}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // A holder with a lock-delay that went away without releasing: nobody may take the lock
    // for a minute.
    let mut gone = lockd.connect().await;
    let reply = gone
        .call(serde_json::json!({"id": 1, "op": "acquire", "resource": "jobs/sync", "lock_delay_ms": 60_000}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    drop(gone);
    let mut observer = lockd.connect().await;
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let status = observer
            .call(serde_json::json!({"id": 1, "op": "status", "resource": "jobs/sync"}))
            .await;
        if status["resources"][0]["delayed_ms"].is_u64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never in lock-delay: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A scheduler leads its election, and an observer watches the deploy lock (its first
    // event stays unread).
    let reply = conns[scheduler]
        .call(json!({"id": 1, "op": "acquire", "resource": "elect/scheduler", "value": "node-a:8080"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut watcher = lockd.connect().await;
    let reply = watcher
        .call(json!({"id": 1, "op": "watch", "resource": "deploy/prod"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
        .await
        .unwrap();

    assert!(dom.contains("data-state=\"live\""), "not live:\n{dom}");
    assert!(dom.contains("<dd id=\"total-waiters\">3</dd>"), "{dom}");
    assert!(dom.contains("<dd id=\"total-holders\">7</dd>"), "{dom}");
    assert!(dom.contains("<dd id=\"total-watches\">1</dd>"), "{dom}");
    let exports = row(&dom, "exports/s3");
    for text in ["2 of 4 permits used", "2 permits", "export@batch-5"] {
        assert!(exports.contains(text), "{text:?} missing from:\n{exports}");
    }
    let deploy = row(&dom, "deploy/prod");
    for text in [
        "2 waiting",
        "1 watching",
        "deploy@ci-runner-7",
        "#1",
        "deploy@ci-runner-9",
        "#2",
        "hotfix@laptop-ana",
    ] {
        assert!(
            deploy.contains(text),
            "{text:?} missing from the row:\n{deploy}"
        );
    }
    // Queue order on the page is the queue's order.
    assert!(deploy.find("deploy@ci-runner-9") < deploy.find("hotfix@laptop-ana"));
    let reports = row(&dom, "reports/nightly");
    for text in [
        "report@batch-3",
        "audit@batch-4",
        "cleanup@batch-1",
        "1 waiting",
    ] {
        assert!(reports.contains(text), "{text:?} missing from:\n{reports}");
    }
    assert!(
        row(&dom, "jobs/sync").contains("nobody: lock-delay, free in"),
        "{dom}"
    );
    // An election's leader shows the value it campaigned with.
    let elect = row(&dom, "elect/scheduler");
    assert!(elect.contains("leads as node-a:8080"), "{elect}");
    // A client without a name shows as its session.
    assert!(row(&dom, "cache/warmup").contains("session "));
    // Hottest first: the longest queue, then the next.
    let at = |name: &str| {
        dom.find(&format!("data-resource=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for {name}"))
    };
    assert!(at("deploy/prod") < at("reports/nightly"));
    assert!(at("reports/nightly") < at("db/migrations"));

    // And a picture, to look at.
    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("dashboard.png");
    let url = format!("http://{admin}/");
    let arg = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || chromium(&url, &["--window-size=1280,640", &arg]))
        .await
        .unwrap();
    let bytes = std::fs::read(&png).expect("Chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000);
    if let Some(keep) = std::env::var_os("LOCKD_DASHBOARD_SCREENSHOT") {
        std::fs::write(keep, &bytes).unwrap();
    }
    drop(conns);
    drop(watcher);
}

async fn lock(conn: &mut Conn, resource: &str, mode: &str) {
    conn.lock(1, resource, mode).await;
}

async fn queue(conn: &mut Conn, resource: &str, mode: &str, position: u64) {
    conn.send(json!({"id": 2, "op": "acquire", "resource": resource, "mode": mode}))
        .await;
    let queued = conn.recv().await;
    assert_eq!(queued["position"], position, "{queued}");
}

/// The `<tr>` of one resource in the dumped DOM.
fn row<'a>(dom: &'a str, resource: &str) -> &'a str {
    let start = dom
        .find(&format!("data-resource=\"{resource}\""))
        .unwrap_or_else(|| panic!("no row for {resource} in:\n{dom}"));
    let end = dom[start..]
        .find("</tr>")
        .map_or(dom.len(), |end| start + end);
    &dom[start..end]
}

/// Runs headless Chromium on `url` with a fresh profile, giving the page's script three seconds
/// of (virtual) time, and returns what it printed.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            // Chromium refuses to run as root with its sandbox, and CI runs as root.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BROWSER_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took over {BROWSER_PATIENCE:?}; its stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = out.join().unwrap();
    let errors = err.join().unwrap();
    assert!(status.success(), "chromium failed ({status}):\n{errors}");
    text
}
