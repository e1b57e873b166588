//! The admin listener (`--admin ADDR`): `GET /metrics` (Prometheus text,
//! rendered by `metrics.rs` from every core's counters) and `GET /livez`,
//! on a thread of its own, apart from the proxied traffic and its cores.
//!
//! It keeps answering while the cores drain, and stops once they are done,
//! so a scrape sees the drain. Each connection gets one answer and is
//! closed.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use todo_http::{admin, DateCache};
use todo_runtime::{lifecycle, Shutdown};

use crate::metrics::{self, CoreMetrics};
use crate::upstream::UpstreamSet;

/// How long a scrape may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
pub struct AdminState {
    pub cores: Arc<[CoreMetrics]>,
    pub set: Arc<UpstreamSet>,
    pub route_limits: Arc<crate::route_limits::SharedLimits>,
}

/// Answer on `listener` until `shutdown` fires (run on its own thread).
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: Shutdown) {
    let state = Rc::new(state);
    let date = Rc::new(DateCache::default());
    lifecycle::accept_until(listener, &shutdown, "todo-lb: admin", |stream, _| {
        let (state, date) = (state.clone(), date.clone());
        monoio::spawn(async move {
            let _ = monoio::time::timeout(REQUEST_TIMEOUT, answer(stream, &state, &date)).await;
        });
    })
    .await;
}

/// Read one request (todo-http's parser and limits: an endless head is
/// 431), write one answer, close.
async fn answer(
    mut stream: TcpStream,
    state: &AdminState,
    date: &DateCache,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut out = Vec::new();
    date.refresh();
    loop {
        let len = buf.len();
        buf.reserve(1024);
        let (res, slice) = stream.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if res? == 0 {
            return Ok(());
        }
        if admin::answer(&buf, date, &mut out, || {
            let mut text = metrics::render(&state.cores, &state.set.current());
            metrics::render_limits(&mut text, &state.route_limits);
            text
        }) {
            break;
        }
    }
    lifecycle::flush(&mut stream, &mut out).await?;
    lifecycle::linger(&mut stream).await;
    Ok(())
}
