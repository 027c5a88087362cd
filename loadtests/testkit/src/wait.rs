//! Waiting for what a test expects to happen, bounded: the condition is
//! polled until it holds, and the test fails naming it when the bound
//! passes. A fixed sleep is either too short on a loaded machine or longer
//! than needed everywhere else.

use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` holds, polling it every [`POLL`]; panics naming
/// `what` once `timeout` has passed without it. A condition that needs no
/// `.await` is written `async || check()`.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for tests without a runtime: polls `condition` on this
/// thread.
pub fn eventually_blocking(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        eventually("the third poll", Duration::from_secs(10), async || {
            polls.fetch_add(1, Ordering::Relaxed) == 2
        })
        .await;
        assert_eq!(polls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for nothing")]
    async fn fails_naming_what_it_waited_for() {
        eventually("nothing", Duration::from_millis(50), async || false).await;
    }

    #[test]
    #[should_panic(expected = "waiting for never")]
    fn blocking_fails_too() {
        eventually_blocking("never", Duration::from_millis(30), || false);
    }
}
