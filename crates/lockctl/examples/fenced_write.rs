//! Fencing a downstream write with the lock's token.
//!
//! A lock alone cannot stop a client that was paused (GC, swap, a stopped VM) from writing
//! after its lock passed to someone else. The fix is a fencing token: the writer sends its
//! token with the write, and the downstream service refuses it unless lockd says the token
//! still belongs to a current holder (`validate`), or unless it is larger than any token it has
//! seen. This example plays both sides against a running lockd:
//! `cargo run -p lockctl --example fenced_write`.

use lockctl::{Client, ClientError, FenceToken};

/// The downstream service: accepts a write only with a token lockd vouches for.
struct Storage {
    lockd: Client,
    highest_token_seen: u64,
}

impl Storage {
    async fn write(&mut self, token: FenceToken, data: &str) -> Result<bool, ClientError> {
        if token.0 < self.highest_token_seen
            || !self.lockd.validate("examples/storage", token).await?
        {
            println!("storage: refused {data:?} with stale token {token}");
            return Ok(false);
        }
        self.highest_token_seen = token.0;
        println!("storage: accepted {data:?} with token {token}");
        Ok(true)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::var("LOCKD_ADDR").unwrap_or_else(|_| lockctl::DEFAULT_ADDR.to_owned());
    let mut storage = Storage {
        lockd: Client::connect(&addr).await?,
        highest_token_seen: 0,
    };
    let slow_writer = Client::connect(&addr).await?;
    let first = slow_writer.lock("examples/storage").acquire().await?;
    let stale_token = first.token();
    storage.write(stale_token, "first writer, on time").await?;
    // The first writer "pauses" and its lock moves on (here: it is released).
    first.release().await?;

    let next_writer = Client::connect(&addr).await?;
    let second = next_writer.lock("examples/storage").acquire().await?;
    storage.write(second.token(), "second writer").await?;
    // The first writer wakes up and tries to write with its old token: refused.
    let accepted = storage.write(stale_token, "first writer, too late").await?;
    assert!(!accepted);
    second.release().await
}
