//! `todo-server`: parse configuration, bind, run. See the library for the flow.

use anyhow::Context;
use clap::Parser;
use todo_runtime::{bind_reuseport, shutdown, ListenerConfig, OpenFiles};
use todo_server::config::{Cli, Command, DataAction};
use todo_server::embedded::command_log;
use todo_server::{auth, token_rules};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.serve;
    match cli.command {
        Some(Command::Token { sub, ttl }) => {
            let secret = auth::load_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
            println!(
                "{}",
                auth::issue(&secret, &token_rules(&config), &sub, ttl)?
            );
            return Ok(());
        }
        Some(Command::Data { action }) => {
            let report = match action {
                DataAction::Check => command_log::check(&config.data_dir)?,
                DataAction::Repair => command_log::repair(&config.data_dir)?,
            };
            for line in &report.lines {
                println!("{line}");
            }
            std::process::exit(i32::from(report.damaged));
        }
        None => {}
    }
    todo_runtime::alloc::buffers_get_own_pages(config.mmap_threshold);
    let open_files = OpenFiles::raise_and_read().context("reading the open-files limit")?;
    let listener_config = ListenerConfig {
        steer: config.steer,
        socket_buffer: (config.socket_buffer > 0).then_some(config.socket_buffer),
        ..ListenerConfig::default()
    };
    eprintln!(
        "todo-server: {}",
        open_files.describe(listener_config.backlog)
    );
    let cores = config.core_count();
    let listeners = bind_reuseport(config.listen, cores, &listener_config)
        .with_context(|| format!("binding {}", config.listen))?;
    // SIGTERM or SIGINT drains: no new connections, each open one closes
    // after its next response (every 202 was made durable first). A second
    // signal exits at once.
    let (trigger, shutdown) = shutdown::channel();
    shutdown::on_signals("todo-server", trigger).context("installing signal handlers")?;
    todo_server::run(config, listeners, shutdown)?;
    Ok(())
}
