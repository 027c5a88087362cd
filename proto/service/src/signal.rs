//! The shutdown signal every server waits for: SIGTERM (what Kubernetes,
//! systemd and compose send) or Ctrl-C.

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// SIGTERM.
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

async fn interrupt() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        // Without the handler, waiting would end at once and stop the
        // server: wait for SIGTERM alone instead.
        tracing::warn!(error = %e, "cannot watch Ctrl-C; SIGTERM only");
        std::future::pending::<()>().await;
    }
}

/// Waits for SIGTERM or Ctrl-C. If SIGTERM cannot be watched, logs it and
/// waits for Ctrl-C alone.
pub async fn shutdown_signal() -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => Shutdown::Terminate,
                () = interrupt() => Shutdown::Interrupt,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
            interrupt().await;
            Shutdown::Interrupt
        }
    }
}
