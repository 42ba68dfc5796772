//! `lockctl backup --http ADDR OUT`: fetches a consistent copy of lockd's store from its admin
//! API (`GET /v1/backup`) into OUT, a file `lockd.redb` can be restored from; and
//! `lockctl restore --http ADDR FILE`, which loads one into a new cluster (`POST /v1/restore`).
//!
//! Plain HTTP/1.1 over TCP, as the admin API speaks it: one request, a body of known length.
//! The copy is written to `OUT.partial`, synced, checked against the announced length, then
//! renamed, so OUT is either a whole backup or absent.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lockctl::cli::AdminCredential;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::{admin_token, fail, usage_error};

/// How long connecting and the answer's head may take; the body then takes what it takes.
const HEAD_PATIENCE: Duration = Duration::from_secs(30);

pub(crate) async fn run(http: &str, admin: &AdminCredential, out: &Path) -> ExitCode {
    if out.exists() {
        return usage_error(&format!(
            "{} exists; a backup never overwrites a file",
            out.display()
        ));
    }
    let token = match admin_token(admin, "backups") {
        Ok(token) => token,
        Err(code) => return code,
    };
    let addr = http.strip_prefix("http://").unwrap_or(http);
    match fetch(addr, &token, out).await {
        Ok((bytes, values)) => {
            println!(
                "Backup of {values} values written to {} ({bytes} bytes).",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

pub(crate) async fn restore(http: &str, admin: &AdminCredential, file: &Path) -> ExitCode {
    let backup = match std::fs::read(file) {
        Ok(backup) => backup,
        Err(err) => return usage_error(&format!("cannot read {}: {err}", file.display())),
    };
    let token = match admin_token(admin, "restores") {
        Ok(token) => token,
        Err(code) => return code,
    };
    let addr = http.strip_prefix("http://").unwrap_or(http);
    match post_restore(addr, &token, &backup).await {
        Ok(answer) => {
            println!(
                "Restored {} values from {}; every token from now on is above {}.",
                answer["restored_values"],
                file.display(),
                answer["tokens_above"]
            );
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

/// Sends `backup` to `POST /v1/restore` and reads the answer: its JSON, or why it was refused.
/// No time limit once sent: the cluster commits a large backup in many entries, and lockd
/// answers within its own limit (ten minutes).
async fn post_restore(addr: &str, token: &str, backup: &[u8]) -> Result<serde_json::Value, String> {
    let lost = |err: std::io::Error| format!("lost the admin API at {addr}: {err}");
    let mut stream = tokio::time::timeout(HEAD_PATIENCE, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("cannot reach lockd's admin API at {addr} within {HEAD_PATIENCE:?}"))?
        .map_err(|err| format!("cannot reach lockd's admin API at {addr}: {err}"))?;
    let head = format!(
        "POST /v1/restore HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        backup.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(lost)?;
    stream.write_all(backup).await.map_err(lost)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(lost)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("the admin API at {addr} closed without answering"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(body.trim())
        .map_err(|_| format!("the admin API at {addr} answered {status}: {body}"))?;
    if status != "200" {
        let reason = json["error"].as_str().unwrap_or(body);
        return Err(format!("lockd refused the restore ({status}): {reason}"));
    }
    Ok(json)
}

/// Fetches the backup into `out`; its size and the number of values it holds.
async fn fetch(addr: &str, token: &str, out: &Path) -> Result<(u64, String), String> {
    let head = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("cannot reach lockd's admin API at {addr}: {err}"))?;
        let mut stream = BufReader::new(stream);
        let request = format!(
            "GET /v1/backup HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|err| format!("lost the admin API at {addr}: {err}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream
                .read_until(b'\n', &mut head)
                .await
                .map_err(|err| format!("lost the admin API at {addr}: {err}"))?;
            if read == 0 {
                return Err(format!("the admin API at {addr} closed without answering"));
            }
        }
        Ok((stream, String::from_utf8_lossy(&head).into_owned()))
    };
    let (mut stream, head) = tokio::time::timeout(HEAD_PATIENCE, head)
        .await
        .map_err(|_| {
            format!("the admin API at {addr} did not answer within {HEAD_PATIENCE:?}")
        })??;
    let status = head.split(' ').nth(1).unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    if status != "200" {
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body).await;
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|json| json["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(format!("lockd refused the backup ({status}): {reason}"));
    }
    let length: u64 = header("content-length")
        .and_then(|length| length.parse().ok())
        .ok_or("the backup came without a Content-Length")?;
    let values = header("x-lockd-backup-values").unwrap_or_else(|| "?".to_owned());
    let partial = out.with_extension("partial");
    let mut file = std::fs::File::create(&partial)
        .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
    let mut written = 0u64;
    let mut chunk = vec![0; 64 * 1024];
    while written < length {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|err| format!("lost the admin API during the backup: {err}"))?;
        if read == 0 {
            break;
        }
        file.write_all(&chunk[..read])
            .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
        written += read as u64;
    }
    if written != length {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "the backup ended after {written} of {length} bytes; nothing was written"
        ));
    }
    file.sync_all()
        .and_then(|()| std::fs::rename(&partial, out))
        .map_err(|err| format!("cannot write {}: {err}", out.display()))?;
    Ok((written, values))
}
