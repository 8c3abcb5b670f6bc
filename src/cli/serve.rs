//! `adclick serve [--config adclick.toml]`: runs until Ctrl-C or SIGTERM, then shuts down
//! gracefully (drains the producer buffer, takes a final checkpoint per partition).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use adclick_server::config::{LogConfig, ServeConfig, StoreConfig};
use adclick_server::serve::{Seams, shutdown_signal, start};

pub fn main(
    config_path: Option<&Path>,
    listen: Option<SocketAddr>,
    allow_unsigned: bool,
) -> anyhow::Result<ExitCode> {
    let mut config = match config_path {
        Some(path) if allow_unsigned => {
            // Validate with the flag applied: a file without signing keys is fine then.
            let text = std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("{}: cannot read: {error}", path.display()))?;
            let mut config: ServeConfig = toml::from_str(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
            config.security.allow_unsigned = true;
            config.validate(&path.display().to_string())?;
            config
        }
        Some(path) => ServeConfig::load(path)?,
        None => ServeConfig::default(),
    };
    if config.security.allow_unsigned {
        eprintln!(
            "adclick serve: WARNING: taking UNSIGNED clicks: anyone who reaches this port can add \
             clicks that advertisers pay for. Demo use only."
        );
    }
    if let Some(listen) = listen {
        config.http.listen = listen;
    }
    if config.log == LogConfig::Memory || config.store == StoreConfig::Memory {
        eprintln!(
            "adclick serve: embedded {} (nothing survives a restart; see README.md for a \
             production config)",
            match (&config.log, &config.store) {
                (LogConfig::Memory, StoreConfig::Memory) => "log and store",
                (LogConfig::Memory, _) => "log",
                _ => "store",
            }
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let seams = Seams::from_config(&config).await?;
        let server = start(config, seams).await?;
        eprintln!(
            "adclick serve: listening on http://{} (POST /v1/clicks, GET /v1/campaigns/ID/clicks, \
             /v1/top, /v1/freshness, /metrics); Ctrl-C stops",
            server.local_addr
        );
        shutdown_signal().await;
        eprintln!("adclick serve: shutting down (draining ingest, final checkpoints)");
        server.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}
