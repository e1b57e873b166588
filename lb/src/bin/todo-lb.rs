//! `todo-lb`: parse configuration, bind, run. See the library for the flow.

use anyhow::Context;
use todo_lb::config::LbConfig;
use todo_runtime::{bind_reuseport, shutdown, ListenerConfig, OpenFiles};

fn main() -> anyhow::Result<()> {
    let config = LbConfig::from_args_and_file(std::env::args_os().collect())?;
    todo_runtime::alloc::buffers_get_own_pages(config.mmap_threshold());
    let limits = OpenFiles::raise_and_read().context("reading the open-files limit")?;
    let listener_config = ListenerConfig::default();
    eprintln!("todo-lb: {}", limits.describe(listener_config.backlog));
    // Fail early on a bad upstream list, before binding.
    todo_lb::configured_upstreams(&config)?;
    config.tls_files()?;
    let plain = bind_reuseport(config.listen, config.core_count(), &listener_config)
        .with_context(|| format!("binding {}", config.listen))?;
    let tls = match config.listen_tls {
        Some(addr) => bind_reuseport(addr, config.core_count(), &listener_config)
            .with_context(|| format!("binding {addr}"))?,
        None => Vec::new(),
    };
    let admin = config
        .admin
        .0
        .map(|addr| std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}")))
        .transpose()?;
    let (trigger, shutdown) = shutdown::channel();
    shutdown::on_signals("todo-lb", trigger).context("installing signal handlers")?;
    todo_lb::run(config, todo_lb::Listeners { plain, tls }, admin, shutdown)?;
    Ok(())
}
