//! Write-to-visible beside the feed, on the same writes: one connection to
//! each core of a server (found as todo-visible finds them: /metrics names
//! the cores, /readyz says which core answered), each asking
//! `GET /todos?limit=1` every `--poll` with If-None-Match (a 304 until the
//! core installs another snapshot). A write is visible when its marker is
//! in the newest todo listed on every core; rounds write one at a time, so
//! the newest is the round's own.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::timer::sleep;
use sonic_rs::JsonValueTrait as _;

use crate::http::{connect, read_response};
use crate::ledger::{lock, Ledger};
use crate::marker::Marker;
use crate::target::Target;

async fn get(
    stream: &mut TcpStream,
    url: &Target,
    path: &str,
    buf: &mut Vec<u8>,
) -> anyhow::Result<todo_testkit::http::Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", url.host);
    stream.write_all(request.as_bytes()).await?;
    read_response(stream, buf).await
}

/// One connection to each core of the server at `url`.
async fn connect_every_core(url: &Target) -> anyhow::Result<Vec<TcpStream>> {
    let mut s = connect(url.addr).await?;
    let metrics = get(&mut s, url, "/metrics", &mut Vec::new()).await?;
    let n = metrics
        .text()
        .lines()
        .filter(|l| l.starts_with("todo_snapshot_version{core="))
        .count();
    if n == 0 {
        bail!("{}: /metrics names no core", url.host);
    }
    let mut found: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    for _ in 0..64 * n {
        if found.iter().all(Option::is_some) {
            break;
        }
        let mut s = connect(url.addr).await?;
        let r = get(&mut s, url, "/readyz", &mut Vec::new()).await?;
        let json: sonic_rs::Value = sonic_rs::from_slice(&r.body)?;
        let core = json["core"].as_u64().context("/readyz names no core")? as usize;
        if let Some(slot @ None) = found.get_mut(core) {
            *slot = Some(s);
        }
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.with_context(|| format!("{}: no connection landed on core {i}", url.host)))
        .collect()
}

/// Start polling every core of `url`; sets the ledger's core count (before
/// any write is opened). The pollers run until `stop`; a poller that fails
/// says why in `broken`.
pub async fn watch(
    url: Target,
    poll: Duration,
    marker: Marker,
    ledger: Arc<Mutex<Ledger>>,
    stop: Rc<Cell<bool>>,
    broken: Rc<RefCell<Option<String>>>,
) -> anyhow::Result<()> {
    let streams = connect_every_core(&url).await?;
    lock(&ledger).cores = streams.len();
    for (core, mut stream) in streams.into_iter().enumerate() {
        let (url, marker, ledger, stop, broken) = (
            url.clone(),
            marker.clone(),
            ledger.clone(),
            stop.clone(),
            broken.clone(),
        );
        glommio::spawn_local(async move {
            let polled = async {
                let mut buf = Vec::new();
                let mut etag = String::new();
                while !stop.get() {
                    let asked = Instant::now();
                    let conditional = if etag.is_empty() {
                        String::new()
                    } else {
                        format!("If-None-Match: {etag}\r\n")
                    };
                    let request = format!(
                        "GET /todos?limit=1 HTTP/1.1\r\nHost: {}\r\n{conditional}\r\n",
                        url.host
                    );
                    stream.write_all(request.as_bytes()).await?;
                    let r = read_response(&mut stream, &mut buf).await?;
                    let now = Instant::now();
                    match r.status {
                        304 => {}
                        200 => {
                            etag = r.header("etag").unwrap_or_default().to_string();
                            if let Some(index) = marker.find(&r.body) {
                                lock(&ledger).listed(index, core, now);
                            }
                        }
                        other => bail!("GET /todos?limit=1 on core {core}: {other}"),
                    }
                    if let Some(left) = poll.checked_sub(asked.elapsed()) {
                        sleep(left).await;
                    }
                }
                anyhow::Ok(())
            };
            if let Err(e) = polled.await {
                *broken.borrow_mut() = Some(e.to_string());
            }
        })
        .detach();
    }
    Ok(())
}
