//! `/livez`, `/readyz` and `/metrics`.

use super::Reply;
use crate::errors;
use crate::metrics;
use crate::per_core::Core;
use todo_http::response;

/// The process is up and this core answers.
pub fn livez(core: &Core, out: &mut Vec<u8>, reply: Reply) -> u16 {
    reply.json(core, out, 200, &[b"{\"status\":\"live\"}"]);
    200
}

/// Ready to take traffic: a snapshot is held and we are not draining.
pub fn readyz(core: &Core, out: &mut Vec<u8>, reply: Reply) -> u16 {
    // Not ready while draining, or before any snapshot arrived (version 0).
    // A stale snapshot is still served, and said so.
    if core.draining.get() || core.snapshot().version() == 0 {
        return reply.error(core, out, &errors::NOT_READY);
    }
    let body = format!(
        r#"{{"status":"ready","backend":"{}","core":{},"snapshot_version":{},"stale":{}}}"#,
        core.backend.name(),
        core.index,
        core.snapshot().version(),
        core.stale()
    );
    reply.json(core, out, 200, &[body.as_bytes()]);
    200
}

/// Prometheus text format, all cores summed.
pub fn metrics(core: &Core, out: &mut Vec<u8>, reply: Reply) -> u16 {
    let text = metrics::render(&core.all_metrics, todo_model::now_ms());
    response::append(
        out,
        response::Head {
            status: 200,
            date: &core.date,
            persist: reply.persist,
            head_only: reply.head_only,
            text: true,
            extra: b"",
        },
        &[text.as_bytes()],
    );
    200
}
