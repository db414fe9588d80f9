//! What an attempt's outcome means for the endpoint's breaker and for a retry, and how long to
//! wait before the next attempt.
use std::{error::Error as _, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Retry schedule and budget of a target.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Window of the retry budget (1–60 s: tower's `TpsBudget` refuses others).
    pub budget_window: Duration,
    /// Retries per second allowed whatever the traffic.
    pub budget_min_per_sec: u32,
    /// Retries allowed as a share of calls (0.2 = 20 %).
    pub budget_ratio: f32,
    /// First backoff; doubled on each retry (full jitter: a random wait up to it).
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            budget_window: Duration::from_secs(10),
            budget_min_per_sec: 10,
            budget_ratio: 0.2,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// How one attempt ended, as far as the breaker and the retry care.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The endpoint looks unhealthy: counts as a failure for its breaker.
    pub endpoint_failed: bool,
    /// Why another attempt may help (a metrics label), if it may.
    pub retry: Option<&'static str>,
    /// The request provably did not run (connection refused, shed): any call may be retried.
    pub not_run: bool,
    /// The server asked for this wait (RetryInfo).
    pub delay: Option<Duration>,
}

/// Reason in the `ErrorInfo` of a call the server shed before running it.
pub const OVERLOADED: &str = "OVERLOADED";

/// Whether an UNAVAILABLE names a dependency the server shares with its replicas (ErrorInfo
/// reason `DATABASE_UNAVAILABLE`, `AUTH_UNAVAILABLE`, …: the `*_UNAVAILABLE` convention of
/// `errors::unavailable`). The endpoint answered; another replica would say the same.
fn names_a_shared_dependency(status: &Status) -> bool {
    status
        .get_details_error_info()
        .is_some_and(|info| info.reason.ends_with("_UNAVAILABLE"))
}

/// Reads an attempt's outcome. A status made on this side from a transport failure (it has a
/// source error) is a transport error whatever its code; one that came from the server is read
/// by its code: UNAVAILABLE and transport errors are the endpoint's fault and are retried
/// (unless the server says a dependency it shares with every replica is down: that is its
/// answer), DEADLINE_EXCEEDED is its fault and is not retried (the time is spent),
/// RESOURCE_EXHAUSTED is retried only when the server said when (RetryInfo), and everything else
/// is an answer.
pub fn classify<T>(outcome: &Result<T, Status>) -> Verdict {
    let answered = Verdict {
        endpoint_failed: false,
        retry: None,
        not_run: false,
        delay: None,
    };
    let Err(status) = outcome else { return answered };
    if let Some(source) = status.source() {
        // tonic maps hyper's "canceled" (a request dropped before it was sent, e.g. on a
        // connection that got GOAWAY) to CANCELLED: it did not run.
        let mut not_run = status.code() == Code::Cancelled;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            not_run |= e.is::<tonic::ConnectError>();
            cause = e.source();
        }
        return Verdict {
            endpoint_failed: true,
            retry: Some("transport"),
            not_run,
            delay: None,
        };
    }
    match status.code() {
        Code::Unavailable if names_a_shared_dependency(status) => answered,
        Code::Unavailable => {
            let details = status.get_error_details();
            Verdict {
                endpoint_failed: true,
                retry: Some("unavailable"),
                not_run: details.error_info().is_some_and(|i| i.reason == OVERLOADED),
                delay: None,
            }
        }
        Code::DeadlineExceeded => Verdict {
            endpoint_failed: true,
            ..answered
        },
        Code::ResourceExhausted => match status.get_details_retry_info().and_then(|r| r.retry_delay) {
            Some(delay) => Verdict {
                retry: Some("resource_exhausted"),
                delay: Some(delay),
                ..answered
            },
            None => answered,
        },
        _ => answered,
    }
}

/// The wait before retry number `retry` (0 for the first): full jitter, a random time up to
/// `base × 2^retry`, capped.
pub fn backoff(settings: &RetrySettings, retry: u32) -> Duration {
    let ceiling = settings
        .backoff_base
        .saturating_mul(2u32.saturating_pow(retry.min(20)))
        .min(settings.backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors;

    fn verdict(status: Status) -> Verdict {
        classify::<()>(&Err(status))
    }

    #[test]
    fn only_unhealthy_endpoints_count_against_the_breaker() {
        assert!(verdict(Status::unavailable("down")).endpoint_failed);
        assert!(verdict(Status::deadline_exceeded("slow")).endpoint_failed);
        for business in [
            Status::not_found("x"),
            Status::invalid_argument("x"),
            Status::permission_denied("x"),
            Status::already_exists("x"),
            Status::failed_precondition("x"),
            Status::unauthenticated("x"),
            Status::internal("x"),
        ] {
            let v = verdict(business);
            assert!(!v.endpoint_failed, "{v:?}");
            assert_eq!(v.retry, None);
        }
        assert_eq!(classify(&Ok::<_, Status>(())).retry, None);
    }

    #[test]
    fn retried_codes() {
        assert_eq!(verdict(Status::unavailable("down")).retry, Some("unavailable"));
        assert_eq!(verdict(Status::deadline_exceeded("slow")).retry, None);
        assert_eq!(verdict(Status::resource_exhausted("quota")).retry, None, "no RetryInfo");
        let told = verdict(errors::resource_exhausted("QUOTA", "later", Duration::from_millis(300)));
        assert_eq!(told.retry, Some("resource_exhausted"));
        assert_eq!(told.delay, Some(Duration::from_millis(300)));
        assert!(!told.endpoint_failed);
    }

    #[test]
    fn a_shared_dependency_down_is_the_servers_answer() {
        let v = verdict(errors::unavailable(
            "DATABASE_UNAVAILABLE",
            "db down",
            Duration::from_secs(2),
        ));
        assert!(!v.endpoint_failed);
        assert_eq!(v.retry, None);
    }

    #[test]
    fn a_shed_call_is_known_not_to_have_run() {
        let shed = verdict(errors::unavailable(OVERLOADED, "busy", Duration::from_secs(1)));
        assert!(shed.not_run);
        assert!(!verdict(Status::unavailable("down")).not_run);
    }

    #[test]
    fn a_refused_connection_is_a_transport_error_that_did_not_run() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        let v = verdict(status);
        assert_eq!(v.retry, Some("transport"));
        assert!(v.not_run && v.endpoint_failed);
    }

    #[test]
    fn a_local_cancellation_is_a_transport_error_that_did_not_run() {
        let status = Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert_eq!(verdict(status).retry, Some("transport"));
        let mut canceled = Status::cancelled("request canceled");
        canceled = Status::from_error(Box::new(canceled));
        assert!(!verdict(canceled).not_run, "a status from the server has no source");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let settings = RetrySettings::default();
        for retry in 0..30 {
            let ceiling = Duration::from_millis(25 * 2u64.pow(retry.min(10))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(backoff(&settings, retry) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| backoff(&settings, 3)).collect();
        assert!(spread.len() > 10, "full jitter spreads the waits");
    }
}
