//! `/livez`, `/readyz` and `/metrics`.

use super::Reply;
use crate::errors;
use crate::metrics;
use crate::per_core::Core;
use todo_http::response;

/// The process is up and this core answers.
pub fn livez(out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    reply.json(out, 200, &[b"{\"status\":\"live\"}"]);
    200
}

/// Ready to take traffic: a snapshot is held and we are not draining.
pub fn readyz(core: &Core, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    // Not ready while draining, or before any snapshot arrived (version 0).
    // A stale snapshot is still served, and said so.
    let version = core.reads.snapshot().version();
    if core.conns.draining() || version == 0 {
        return reply.error(out, &errors::NOT_READY);
    }
    let body = format!(
        r#"{{"status":"ready","backend":"{}","core":{},"snapshot_version":{},"stale":{}}}"#,
        core.writes.backend.name(),
        core.index,
        version,
        core.reads.stale()
    );
    reply.json(out, 200, &[body.as_bytes()]);
    200
}

/// Prometheus text format, all cores summed.
pub fn metrics(core: &Core, out: &mut Vec<u8>, reply: Reply<'_>) -> u16 {
    let mut text = metrics::render(core.obs.all_metrics(), todo_model::now_ms());
    let (todos, users, categories) = {
        let m = core.reads.model.read();
        (m.len(), m.users().count(), m.categories().count())
    };
    use std::fmt::Write;
    let _ = write!(
        text,
        "# HELP todo_password_hashes_total Argon2id runs (registrations and login checks, unknown users included).\n\
         # TYPE todo_password_hashes_total counter\n\
         todo_password_hashes_total {}\n\
         # HELP todo_read_model_version Version of the state the read model holds (0 until loaded).\n\
         # TYPE todo_read_model_version gauge\n\
         todo_read_model_version {}\n\
         # HELP todo_read_model_rows Rows the read model holds, by kind.\n\
         # TYPE todo_read_model_rows gauge\n\
         todo_read_model_rows{{kind=\"todos\"}} {todos}\n\
         todo_read_model_rows{{kind=\"users\"}} {users}\n\
         todo_read_model_rows{{kind=\"categories\"}} {categories}\n",
        core.auth.accounts.hashes(),
        core.reads.model.version(),
    );
    core.writes.backend.render_metrics(&mut text);
    response::append(
        out,
        response::Head {
            status: 200,
            date: reply.date,
            persist: reply.persist,
            head_only: reply.head_only,
            text: true,
            extra: b"",
        },
        &[text.as_bytes()],
    );
    200
}
