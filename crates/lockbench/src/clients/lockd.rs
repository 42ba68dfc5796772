//! A lean client of lockd's wire protocol, built for the benchmark's hot loops.
//!
//! Requests are formatted by hand into one buffer that lives as long as the connection (the
//! resource names lockbench makes never need JSON escaping), and replies are read into a struct
//! with only the fields the loops use, borrowing from the line buffer. A request/reply round
//! trip therefore allocates nothing. It is not a general client: it trusts its own requests,
//! speaks one request at a time except in [`LockdConn::hold_many`], and turns every refusal
//! into an error, because a benchmark that gets a refusal has a bug to report, not to handle.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{LineReader, Locker};

/// The lease every benchmark session asks for: lockd's longest by default, so that sessions
/// that only hold locks or wait in line (and send nothing for a while) never expire mid-run.
pub const BENCH_LEASE_MS: u64 = 300_000;

/// How long a setup step (connect, hello, a queued acquire's first answer) may take before the
/// benchmark gives up instead of hanging.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// Lock modes as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One holder at a time.
    Exclusive,
    /// Any number of shared holders.
    Shared,
    /// One permit of a semaphore of this many.
    Permit {
        /// The semaphore's limit.
        limit: u16,
    },
}

impl Mode {
    /// The fields after the resource that ask for this mode: `,"mode":"..."`, or a semaphore's
    /// `,"limit":N` (one permit, the default).
    fn push_fields(self, out: &mut Vec<u8>) {
        let mode: &[u8] = match self {
            Mode::Exclusive => b"exclusive",
            Mode::Shared => b"shared",
            Mode::Permit { limit } => {
                out.extend_from_slice(b",\"limit\":");
                out.extend_from_slice(itoa::Buffer::new().format(limit).as_bytes());
                return;
            }
        };
        out.extend_from_slice(b",\"mode\":\"");
        out.extend_from_slice(mode);
        out.push(b'"');
    }
}

/// The first answer to an acquire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Granted at once, with this token.
    Granted(u64),
    /// Queued at this position (1 = next); the grant comes later.
    Queued(u64),
}

/// One connection to lockd, that is one session.
#[derive(Debug)]
pub struct LockdConn {
    stream: TcpStream,
    /// The request being written; cleared, never freed.
    out: Vec<u8>,
    lines: LineReader,
    next_id: u64,
}

/// The only reply fields the benchmark reads; the rest of a frame (`mode`, an error's text,
/// `status` results) is skipped without allocating.
#[derive(Deserialize)]
struct Reply<'a> {
    id: Option<u64>,
    ok: Option<bool>,
    token: Option<u64>,
    #[serde(borrow)]
    event: Option<&'a str>,
    position: Option<u64>,
    /// A multi-resource acquire's grant: each member's token, in the request's order.
    #[serde(default, deserialize_with = "member_tokens")]
    tokens: Vec<u64>,
}

/// The `token` of each member in a multi-resource acquire's `tokens`, skipping the rest.
fn member_tokens<'de, D: serde::Deserializer<'de>>(input: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Member {
        token: u64,
    }
    let members: Vec<Member> = Deserialize::deserialize(input)?;
    Ok(members.into_iter().map(|member| member.token).collect())
}

/// What one frame from lockd said about the request it answers.
enum Answer {
    Ok {
        token: Option<u64>,
        tokens: Vec<u64>,
    },
    Queued {
        position: u64,
    },
}

impl LockdConn {
    /// Connects, says `hello` with [`BENCH_LEASE_MS`], and waits for the answer.
    pub async fn connect(addr: SocketAddr) -> Result<LockdConn> {
        let mut conn = LockdConn::connect_without_hello(addr).await?;
        conn.send_hello()
            .await
            .context("cannot send hello to lockd")?;
        tokio::time::timeout(SETUP_PATIENCE, conn.finish_request())
            .await
            .map_err(|_| anyhow!("lockd did not answer hello within {SETUP_PATIENCE:?}"))?
            .context("hello failed")?;
        Ok(conn)
    }

    /// Connects without saying anything; [`Self::send_hello`] and [`Self::finish_request`]
    /// finish the job, so that many connections can be opened before their replies are read.
    pub async fn connect_without_hello(addr: SocketAddr) -> Result<LockdConn> {
        let stream = tokio::time::timeout(SETUP_PATIENCE, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to lockd at {addr} took over {SETUP_PATIENCE:?}"))?
            .with_context(|| format!("cannot connect to lockd at {addr}"))?;
        // Requests are single small writes that the loop waits on; Nagle would delay them.
        stream.set_nodelay(true)?;
        Ok(LockdConn {
            stream,
            out: Vec::with_capacity(256),
            lines: LineReader::new(),
            next_id: 1,
        })
    }

    /// Sends `hello` with the benchmark lease; its reply is read by [`Self::finish_request`].
    pub async fn send_hello(&mut self) -> Result<()> {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"hello");
        self.out
            .extend_from_slice(b",\"client\":\"lockbench\",\"lease_ms\":");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(BENCH_LEASE_MS).as_bytes());
        self.out.extend_from_slice(b"}\n");
        self.flush().await
    }

    /// Sends `ping`; its reply is read by [`Self::finish_request`].
    pub async fn send_ping(&mut self) -> Result<()> {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"ping");
        self.out.extend_from_slice(b"}\n");
        self.flush().await
    }

    /// Sends `watch` of `resource`; its reply is read by [`Self::finish_request`], and the
    /// events that follow by [`Self::next_event`].
    pub async fn send_watch(&mut self, resource: &[u8]) -> Result<()> {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"watch");
        self.out.extend_from_slice(b",\"resource\":\"");
        self.out.extend_from_slice(resource);
        self.out.extend_from_slice(b"\"}\n");
        self.flush().await
    }

    /// The next frame, unread: a watch event, for a connection that sends nothing more.
    pub async fn next_event(&mut self) -> Result<&[u8]> {
        self.lines.next_line(&mut self.stream).await
    }

    /// Reads the reply to the oldest request sent and not yet answered, which must succeed.
    pub async fn finish_request(&mut self) -> Result<()> {
        match self.next_answer().await? {
            Answer::Ok { .. } => Ok(()),
            Answer::Queued { .. } => bail!("lockd queued a request that was not an acquire"),
        }
    }

    /// Acquires `resource` and waits through any `queued` event until it is granted.
    pub async fn acquire(&mut self, resource: &[u8], mode: Mode) -> Result<u64> {
        match self.start_acquire(resource, mode).await? {
            Started::Granted(token) => Ok(token),
            Started::Queued(_) => self.wait_grant().await,
        }
    }

    /// Sends an acquire and returns its first answer: a grant, or its place in the queue.
    pub async fn start_acquire(&mut self, resource: &[u8], mode: Mode) -> Result<Started> {
        self.out.clear();
        let id = self.take_id();
        push_acquire(&mut self.out, id, resource, mode);
        self.flush().await?;
        match self.next_answer().await? {
            Answer::Ok {
                token: Some(token), ..
            } => Ok(Started::Granted(token)),
            Answer::Ok { token: None, .. } => bail!("lockd granted an acquire without a token"),
            Answer::Queued { position } => Ok(Started::Queued(position)),
        }
    }

    /// Waits for the grant of an acquire that was queued.
    pub async fn wait_grant(&mut self) -> Result<u64> {
        loop {
            match self.next_answer().await? {
                Answer::Ok {
                    token: Some(token), ..
                } => return Ok(token),
                Answer::Ok { token: None, .. } => {
                    bail!("lockd granted an acquire without a token")
                }
                // A second event for the same acquire is allowed by the protocol; keep waiting.
                Answer::Queued { .. } => {}
            }
        }
    }

    /// Acquires every one of `resources` exclusively in one multi-resource acquire, waiting
    /// through any `queued` event until all are granted; fills `tokens` in the same order.
    pub async fn acquire_group(
        &mut self,
        resources: &[Vec<u8>],
        tokens: &mut Vec<u64>,
    ) -> Result<()> {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"acquire");
        self.out.extend_from_slice(b",\"resources\":[");
        for (i, resource) in resources.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"{\"resource\":\"");
            self.out.extend_from_slice(resource);
            self.out.extend_from_slice(b"\"}");
        }
        self.out.extend_from_slice(b"]}\n");
        self.flush().await?;
        loop {
            match self.next_answer().await? {
                Answer::Ok {
                    tokens: granted, ..
                } if granted.len() == resources.len() => {
                    *tokens = granted;
                    return Ok(());
                }
                Answer::Ok { .. } => {
                    bail!("lockd granted a multi-resource acquire without a token each")
                }
                Answer::Queued { .. } => {}
            }
        }
    }

    /// Releases each of `resources`, held with the token at the same place in `tokens`: every
    /// release is sent in one write, then every reply is read.
    pub async fn release_all(&mut self, resources: &[Vec<u8>], tokens: &[u64]) -> Result<()> {
        self.out.clear();
        for (resource, token) in resources.iter().zip(tokens) {
            let id = self.take_id();
            self.push_prefix(id, b"release");
            self.out.extend_from_slice(b",\"resource\":\"");
            self.out.extend_from_slice(resource);
            self.out.extend_from_slice(b"\",\"token\":");
            self.out
                .extend_from_slice(itoa::Buffer::new().format(*token).as_bytes());
            self.out.extend_from_slice(b"}\n");
        }
        self.flush().await?;
        for _ in tokens {
            self.finish_request().await?;
        }
        Ok(())
    }

    /// Withdraws the acquire sent last, which must be waiting: reads the cancel's reply, then
    /// the acquire's own failure (`cancelled`).
    pub async fn cancel_last_acquire(&mut self) -> Result<()> {
        let target = self.next_id - 1;
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"cancel");
        self.out.extend_from_slice(b",\"target\":");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(target).as_bytes());
        self.out.extend_from_slice(b"}\n");
        self.flush().await?;
        self.finish_request().await?;
        let line = self.lines.next_line(&mut self.stream).await?;
        let reply: Reply<'_> = serde_json::from_slice(line)
            .with_context(|| format!("lockd sent a frame lockbench cannot read: {}", show(line)))?;
        if reply.id != Some(target) || reply.ok != Some(false) {
            bail!(
                "expected the cancelled acquire's failure, got {}",
                show(line)
            );
        }
        Ok(())
    }

    /// Releases `resource`, held with `token`.
    pub async fn release(&mut self, resource: &[u8], token: u64) -> Result<()> {
        self.start_held_request(b"release", resource, token);
        self.out.extend_from_slice(b"}\n");
        self.flush().await?;
        self.finish_request().await
    }

    /// Writes `value` (plain text that needs no JSON escaping) to `resource`, held exclusively
    /// with `token`, and waits for the acknowledgement, which lockd sends only once the value
    /// is durable.
    pub async fn write(&mut self, resource: &[u8], token: u64, value: &[u8]) -> Result<()> {
        self.start_held_request(b"write", resource, token);
        self.out.extend_from_slice(b",\"value\":\"");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\"}\n");
        self.flush().await?;
        self.finish_request().await
    }

    /// Reads `resource`'s value, held with `token`, and waits for the reply (linearizable in a
    /// cluster). The value itself is skipped.
    pub async fn read(&mut self, resource: &[u8], token: u64) -> Result<()> {
        self.start_held_request(b"read", resource, token);
        self.out.extend_from_slice(b"}\n");
        self.flush().await?;
        self.finish_request().await
    }

    /// Acquires `count` fresh resources named `{prefix}{i}` exclusively, pipelining `batch`
    /// acquires per write, and keeps them until the connection is dropped. Every one must be
    /// granted without a holder ahead of it (they are fresh); a grant may still wait, at the
    /// head of its queue, for lockd's next fencing-token reservation to be durable (a burst of
    /// grants can use one up), so a `queued` event at position 1 is followed by the grant. The
    /// tokens are not kept.
    pub async fn hold_many(&mut self, prefix: &str, count: u64, batch: u64) -> Result<()> {
        let mut name = Vec::with_capacity(prefix.len() + 20);
        let mut next = 0;
        while next < count {
            let end = (next + batch.max(1)).min(count);
            self.out.clear();
            let first_id = self.next_id;
            for i in next..end {
                name.clear();
                name.extend_from_slice(prefix.as_bytes());
                name.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
                let id = self.take_id();
                push_acquire(&mut self.out, id, &name, Mode::Exclusive);
            }
            self.flush().await?;
            let mut granted = 0;
            while granted < end - next {
                let (id, answer) = self.next_frame().await?;
                let i = next + id.saturating_sub(first_id);
                match answer {
                    Answer::Ok { token: Some(_), .. } => granted += 1,
                    Answer::Ok { token: None, .. } => {
                        bail!("lockd granted fresh resource {prefix}{i} without a token")
                    }
                    Answer::Queued { position: 1 } => {}
                    Answer::Queued { position } => bail!(
                        "lockd queued the acquire of fresh resource {prefix}{i} at position \
                         {position}, behind another holder or waiter"
                    ),
                }
            }
            next = end;
        }
        Ok(())
    }

    /// How many holders and waiters `resource` has, from `status`. Not for hot loops: it parses
    /// the reply into a `serde_json::Value`.
    pub async fn holders_and_waiters(&mut self, resource: &[u8]) -> Result<(usize, usize)> {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, b"status");
        self.out.extend_from_slice(b",\"resource\":\"");
        self.out.extend_from_slice(resource);
        self.out.extend_from_slice(b"\"}\n");
        self.flush().await?;
        let line = self.lines.next_line(&mut self.stream).await?;
        let reply: serde_json::Value = serde_json::from_slice(line)
            .with_context(|| format!("lockd sent invalid JSON: {}", show(line)))?;
        let count = |field: &str| {
            reply["resources"][0][field]
                .as_array()
                .map(Vec::len)
                .ok_or_else(|| anyhow!("unexpected status reply: {reply}"))
        };
        Ok((count("holders")?, count("waiters")?))
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts a new request about a lock held with `token`:
    /// `{"id":N,"op":"OP","resource":"R","token":T` (no closing brace).
    fn start_held_request(&mut self, op: &[u8], resource: &[u8], token: u64) {
        self.out.clear();
        let id = self.take_id();
        self.push_prefix(id, op);
        self.out.extend_from_slice(b",\"resource\":\"");
        self.out.extend_from_slice(resource);
        self.out.extend_from_slice(b"\",\"token\":");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(token).as_bytes());
    }

    fn push_prefix(&mut self, id: u64, op: &[u8]) {
        push_prefix(&mut self.out, id, op);
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream
            .write_all(&self.out)
            .await
            .context("cannot write to lockd")
    }

    /// Reads the next frame and checks that it is a success or a `queued` event. Requests on
    /// one connection are answered in order except for grants after a wait, and the benchmark
    /// never has a second request in flight behind a waiting acquire, so the id is not checked
    /// against a table; it is only required to be present.
    async fn next_answer(&mut self) -> Result<Answer> {
        Ok(self.next_frame().await?.1)
    }

    /// The next frame from lockd: the id it answers, and what it says.
    async fn next_frame(&mut self) -> Result<(u64, Answer)> {
        let line = self.lines.next_line(&mut self.stream).await?;
        let reply: Reply<'_> = serde_json::from_slice(line)
            .with_context(|| format!("lockd sent a frame lockbench cannot read: {}", show(line)))?;
        let Some(id) = reply.id else {
            bail!("lockd refused a frame: {}", show(line));
        };
        match (reply.event, reply.ok) {
            (Some("queued"), _) => Ok((
                id,
                Answer::Queued {
                    position: reply.position.unwrap_or(0),
                },
            )),
            (None, Some(true)) => Ok((
                id,
                Answer::Ok {
                    token: reply.token,
                    tokens: reply.tokens,
                },
            )),
            _ => bail!("lockd refused a request: {}", show(line)),
        }
    }
}

/// Appends `{"id":N,"op":"OP"` (no closing brace).
fn push_prefix(out: &mut Vec<u8>, id: u64, op: &[u8]) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(op);
    out.push(b'"');
}

/// Appends one acquire request line, newline included.
fn push_acquire(out: &mut Vec<u8>, id: u64, resource: &[u8], mode: Mode) {
    push_prefix(out, id, b"acquire");
    out.extend_from_slice(b",\"resource\":\"");
    out.extend_from_slice(resource);
    out.push(b'"');
    mode.push_fields(out);
    out.extend_from_slice(b"}\n");
}

/// A line from the server as text for an error message, cut short if long.
fn show(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(300)]);
    text.into_owned()
}

/// A lockd connection bound to one resource and mode: the [`Locker`] the loops drive.
#[derive(Debug)]
pub struct LockdLocker {
    conn: LockdConn,
    resource: Vec<u8>,
    mode: Mode,
    token: Option<u64>,
}

impl LockdLocker {
    /// Connects and binds the connection to `resource`.
    pub async fn connect(addr: SocketAddr, resource: String, mode: Mode) -> Result<LockdLocker> {
        Ok(LockdLocker {
            conn: LockdConn::connect(addr).await?,
            resource: resource.into_bytes(),
            mode,
            token: None,
        })
    }

    /// The acquire request this locker sends with id 1, for the echo loop to copy its size.
    pub fn sample_acquire_line(resource: &str) -> Vec<u8> {
        let mut line = Vec::new();
        push_acquire(&mut line, 1, resource.as_bytes(), Mode::Exclusive);
        line
    }

    /// The release request this locker sends with id 2 and a six-digit token, likewise.
    pub fn sample_release_line(resource: &str) -> Vec<u8> {
        let mut line = Vec::new();
        push_prefix(&mut line, 2, b"release");
        line.extend_from_slice(b",\"resource\":\"");
        line.extend_from_slice(resource.as_bytes());
        line.extend_from_slice(b"\",\"token\":123456}\n");
        line
    }
}

impl Locker for LockdLocker {
    async fn acquire(&mut self) -> Result<()> {
        let token = self.conn.acquire(&self.resource, self.mode).await?;
        self.token = Some(token);
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        let token = self
            .token
            .take()
            .ok_or_else(|| anyhow!("release without a held lock"))?;
        self.conn.release(&self.resource, token).await
    }
}

/// A lockd connection that takes several resources exclusively and gives them back: in one
/// multi-resource acquire (`group`), or in single acquires one after the other, in the order
/// given (which must be one global order, or two such lockers could deadlock). Either way every
/// release is sent in one write. The [`Locker`] of the `multi` mode.
#[derive(Debug)]
pub struct SetLocker {
    conn: LockdConn,
    resources: Vec<Vec<u8>>,
    group: bool,
    /// The tokens held, in the order of `resources`; empty when nothing is held.
    tokens: Vec<u64>,
}

impl SetLocker {
    /// Connects and binds the connection to `resources`.
    pub async fn connect(
        addr: SocketAddr,
        resources: Vec<String>,
        group: bool,
    ) -> Result<SetLocker> {
        Ok(SetLocker {
            conn: LockdConn::connect(addr).await?,
            resources: resources.into_iter().map(String::into_bytes).collect(),
            group,
            tokens: Vec::new(),
        })
    }
}

impl Locker for SetLocker {
    async fn acquire(&mut self) -> Result<()> {
        if self.group {
            return self
                .conn
                .acquire_group(&self.resources, &mut self.tokens)
                .await;
        }
        self.tokens.clear();
        for resource in &self.resources {
            let token = self.conn.acquire(resource, Mode::Exclusive).await?;
            self.tokens.push(token);
        }
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        if self.tokens.len() != self.resources.len() {
            bail!("release without the locks held");
        }
        self.conn.release_all(&self.resources, &self.tokens).await?;
        self.tokens.clear();
        Ok(())
    }
}

/// A lockd connection that takes its own resource, writes a value to it and releases it: the
/// [`Locker`] of the `writes` mode. Its `acquire` is the lock and the durable write together.
#[derive(Debug)]
pub struct WritingLocker {
    locker: LockdLocker,
    /// Counts writes, so that every value differs from the last.
    written: u64,
}

impl WritingLocker {
    /// Connects and binds the connection to `resource`, locked exclusively.
    pub async fn connect(addr: SocketAddr, resource: String) -> Result<WritingLocker> {
        Ok(WritingLocker {
            locker: LockdLocker::connect(addr, resource, Mode::Exclusive).await?,
            written: 0,
        })
    }
}

impl Locker for WritingLocker {
    async fn acquire(&mut self) -> Result<()> {
        self.locker.acquire().await?;
        let token = self
            .locker
            .token
            .ok_or_else(|| anyhow!("acquired without a token"))?;
        self.written += 1;
        let mut digits = itoa::Buffer::new();
        let value = digits.format(self.written).as_bytes();
        let locker = &mut self.locker;
        locker.conn.write(&locker.resource, token, value).await
    }

    async fn release(&mut self) -> Result<()> {
        self.locker.release().await
    }
}

/// A lockd connection that holds the exclusive lock on a resource of its own and then either
/// reads its value or writes it, one request per loop turn: the [`Locker`] of the `reads` mode.
/// Its `acquire` is the one request and its `release` does nothing, so the loop's pairs count
/// single requests.
#[derive(Debug)]
pub struct ReadingLocker {
    locker: LockdLocker,
    token: u64,
    write: bool,
    written: u64,
}

impl ReadingLocker {
    /// Connects, takes `resource`, and writes a first value so that reads find one.
    pub async fn connect(addr: SocketAddr, resource: String, write: bool) -> Result<ReadingLocker> {
        let mut locker = LockdLocker::connect(addr, resource, Mode::Exclusive).await?;
        let token = locker
            .conn
            .acquire(&locker.resource, Mode::Exclusive)
            .await?;
        locker.conn.write(&locker.resource, token, b"0").await?;
        Ok(ReadingLocker {
            locker,
            token,
            write,
            written: 0,
        })
    }
}

impl Locker for ReadingLocker {
    async fn acquire(&mut self) -> Result<()> {
        let locker = &mut self.locker;
        if self.write {
            self.written += 1;
            let mut digits = itoa::Buffer::new();
            let value = digits.format(self.written).as_bytes();
            locker.conn.write(&locker.resource, self.token, value).await
        } else {
            locker.conn.read(&locker.resource, self.token).await
        }
    }

    async fn release(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_documented_json() {
        let line = LockdLocker::sample_acquire_line("r");
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(
            value,
            serde_json::json!({"id":1,"op":"acquire","resource":"r","mode":"exclusive"})
        );
        let mut line = Vec::new();
        push_acquire(&mut line, 7, b"s", Mode::Permit { limit: 4 });
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(
            value,
            serde_json::json!({"id":7,"op":"acquire","resource":"s","limit":4})
        );
        let line = LockdLocker::sample_release_line("r");
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        assert_eq!(
            value,
            serde_json::json!({"id":2,"op":"release","resource":"r","token":123456})
        );
    }

    #[test]
    fn replies_parse_without_the_fields_we_skip() {
        let reply: Reply<'_> =
            serde_json::from_slice(br#"{"id":3,"ok":true,"token":9,"mode":"exclusive"}"#)
                .expect("parses");
        assert_eq!(
            (reply.id, reply.ok, reply.token),
            (Some(3), Some(true), Some(9))
        );
        let reply: Reply<'_> = serde_json::from_slice(
            br#"{"id":6,"ok":true,"tokens":[{"resource":"a","token":7,"mode":"exclusive"},{"resource":"b","token":8,"mode":"exclusive"}]}"#,
        )
        .expect("parses");
        assert_eq!((reply.token, reply.tokens), (None, vec![7, 8]));
        let reply: Reply<'_> =
            serde_json::from_slice(br#"{"id":4,"event":"queued","position":2}"#).expect("parses");
        assert_eq!((reply.event, reply.position), (Some("queued"), Some(2)));
        let reply: Reply<'_> = serde_json::from_slice(
            br#"{"id":5,"ok":false,"error":{"code":"not_held","message":"No \"such\" lock."}}"#,
        )
        .expect("parses");
        assert_eq!(reply.ok, Some(false));
    }
}
