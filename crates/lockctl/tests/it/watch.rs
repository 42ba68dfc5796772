//! `Client::watch` and `lockctl watch`: the state first, then each change; the end of the
//! session ends the watch loudly.

use lockctl::{LockMode, WatchChange};

use crate::support::{Running, Server};

#[tokio::test]
async fn the_library_streams_the_state_then_the_changes() {
    let server = Server::start();
    let holder = server.client().await;
    let lock = holder
        .acquire("cfg", LockMode::Exclusive, None)
        .await
        .unwrap();
    holder.write("cfg", lock.token, "v1").await.unwrap();

    let watcher = server.client().await;
    let mut watch = watcher.watch("cfg").await.unwrap();
    let first = watch.next().await.unwrap();
    assert_eq!(first.resource.as_str(), "cfg");
    let WatchChange::State(state) = first.change else {
        panic!("the first event is not the state: {first:?}");
    };
    assert_eq!(state.value.as_deref(), Some("v1"));
    assert_eq!(state.holders[0].token, lock.token);

    holder.write("cfg", lock.token, "v2").await.unwrap();
    holder.release("cfg", lock.token).await.unwrap();
    let written = watch.next().await.unwrap().change;
    assert_eq!(
        written,
        WatchChange::Written {
            token: lock.token,
            value: "v2".to_owned()
        }
    );
    let WatchChange::Released(released) = watch.next().await.unwrap().change else {
        panic!("no release");
    };
    assert_eq!(released.token, lock.token);
    watch.unwatch().await.unwrap();
    assert!(
        watcher.watch("").await.is_err(),
        "an invalid name is refused"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lockctl_watch_prints_each_event_and_fails_when_the_session_is_lost() {
    let mut server = Server::start();
    let mut running = Running::spawn(&server.addr_string(), &["watch", "cfg"]);
    running
        .wait_for_line(r#"{"resource":"cfg","kind":"state""#)
        .await;
    let holder = server.client().await;
    let lock = holder
        .acquire("cfg", LockMode::Exclusive, None)
        .await
        .unwrap();
    running
        .wait_for_line(r#"{"resource":"cfg","kind":"granted""#)
        .await;
    drop(holder);
    let _ = lock;
    tokio::task::block_in_place(|| server.stop());
    let (code, lines, stderr) = running.finish().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(lines[0].contains(r#""kind":"state""#), "{lines:?}");
    assert!(
        stderr.contains("lost the session with lockd; the watch of cfg has ended"),
        "{stderr}"
    );
}
