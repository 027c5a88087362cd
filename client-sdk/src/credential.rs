//! The session token, kept current for everyone who presents it.
//!
//! The license server issues a short-lived session token with the license
//! and a fresh one with every renewal (the default policy: renewal every
//! 60 s, 30 s of grace, so a token lives 90 s). Whoever proves the session
//! to others (the tracker announcer, new peer connections, requests on
//! existing ones, the player endpoint's ClearKey proxy) reads the newest
//! token here at the moment it presents it. Each token has a generation,
//! so a long-lived connection can tell that the token it presented is no
//! longer the newest and present the new one (the tracker and the peer wire
//! both accept a refresh on an open connection).
//!
//! The heartbeat task renews the license on the policy's interval. A
//! failed renewal is retried with back-off while the current token is still
//! valid; once it has expired the session ends
//! ([`crate::Event::SessionEnded`]): its keys and token are no longer good,
//! and carrying on would only produce refusals everywhere.

use std::sync::Arc;
use std::time::Duration;

use loaves_proto::UnixSeconds;
use loaves_proto::keys::SigningKeyPair;
use tokio::sync::watch;

use crate::events::{EndReason, Event};
use crate::license::{LicenseClient, LicensedSession};
use crate::session::Shared;
use crate::stats::Counters;

/// The session token in force.
#[derive(Debug, Clone)]
pub(crate) struct SessionCredential {
    /// The encoded, signed token.
    pub(crate) token: Arc<[u8]>,
    /// 0 for the token of the license, then one more per renewal.
    pub(crate) generation: u64,
    /// When the token stops being accepted.
    pub(crate) expires_at: UnixSeconds,
}

/// The newest session token, shared by the session's tasks.
#[derive(Debug)]
pub(crate) struct Credentials {
    current: watch::Sender<SessionCredential>,
}

impl Credentials {
    pub(crate) fn new(licensed: &LicensedSession) -> Self {
        let (current, _) = watch::channel(SessionCredential {
            token: Arc::from(licensed.session_token()),
            generation: 0,
            expires_at: licensed.expires_at(),
        });
        Self { current }
    }

    /// The token to present now.
    pub(crate) fn current(&self) -> SessionCredential {
        self.current.borrow().clone()
    }

    /// The generation of the token in force.
    pub(crate) fn generation(&self) -> u64 {
        self.current.borrow().generation
    }

    /// Replaces the token with the renewed license's.
    fn renewed(&self, licensed: &LicensedSession) {
        self.current.send_modify(|credential| {
            credential.token = Arc::from(licensed.session_token());
            credential.generation += 1;
            credential.expires_at = licensed.expires_at();
        });
    }
}

/// First retry of a failed renewal; doubled after each failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(15);

/// How long to wait before the next renewal attempt.
fn next_attempt(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        interval
    } else {
        (RETRY_FIRST * 2u32.saturating_pow(failures - 1).min(1 << 10)).min(RETRY_MAX)
    }
}

/// The license heartbeat: renews on the policy's interval (or the
/// configured one, when shorter) until the session is cancelled, then
/// returns the client and session for the release. Returns `None` when the
/// license expired without renewal (the session was ended: nothing left to
/// release).
pub(crate) async fn heartbeat(
    shared: Arc<Shared>,
    mut client: LicenseClient,
    mut licensed: LicensedSession,
    key: Arc<SigningKeyPair>,
) -> Option<(LicenseClient, LicensedSession)> {
    let mut failures: u32 = 0;
    loop {
        let policy = Duration::from_secs(u64::from(licensed.renewal_interval_s().max(1)));
        let interval = match shared.config.renewal_interval {
            Some(configured) => configured.min(policy),
            None => policy,
        };
        tokio::select! {
            () = shared.cancel.cancelled() => return Some((client, licensed)),
            () = tokio::time::sleep(next_attempt(interval, failures)) => {}
        }
        let renewal = tokio::select! {
            () = shared.cancel.cancelled() => return Some((client, licensed)),
            result = client.renew(&mut licensed, &key, None, UnixSeconds::now()) => result,
        };
        match renewal {
            Ok(()) => {
                failures = 0;
                // A renewal may carry keys of new key periods, and always
                // carries a fresh session token.
                shared.learn_keys(&licensed);
                shared.credentials.renewed(&licensed);
                Counters::add(&shared.counters.renewals, 1);
                shared.emit(Event::LicenseRenewed);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let message = error.to_string();
                shared.emit(Event::LicenseRenewalFailed {
                    message: message.clone(),
                });
                if UnixSeconds::now() >= shared.credentials.current().expires_at {
                    shared.end(EndReason::LicenseExpired { message });
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_are_bounded() {
        let interval = Duration::from_secs(60);
        assert_eq!(next_attempt(interval, 0), interval);
        assert_eq!(next_attempt(interval, 1), Duration::from_secs(1));
        assert_eq!(next_attempt(interval, 2), Duration::from_secs(2));
        assert_eq!(next_attempt(interval, 4), Duration::from_secs(8));
        assert_eq!(next_attempt(interval, 5), RETRY_MAX);
        assert_eq!(next_attempt(interval, u32::MAX), RETRY_MAX);
    }
}
