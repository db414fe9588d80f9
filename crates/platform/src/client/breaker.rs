//! A circuit breaker per endpoint, with failure accrual as linkerd2-proxy does it: the endpoint
//! is ejected after `consecutive_failures` failures in a row, or when at least `failure_rate` of
//! at least `min_calls` calls in the last `window` failed. While open, calls fail at once and
//! never touch the network. After a backoff (doubling from `backoff_min` to `backoff_max`, with
//! jitter) exactly one probe is let through, whatever the concurrency; its success closes the
//! breaker, its failure opens it again for a longer backoff.
//!
//! Only failures that say the endpoint is unhealthy are recorded (the caller decides: see
//! `retry::Verdict`); a business error is a success here. Time is tokio's, so tests drive it
//! with paused time.
use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls in `window` (0.0–1.0) that opens it, once `min_calls` were made.
    pub failure_rate: f64,
    /// Calls in `window` before the failure rate counts.
    pub min_calls: u32,
    /// The sliding window of the failure rate.
    pub window: Duration,
    /// First ejection; doubled on every failed probe.
    pub backoff_min: Duration,
    /// Longest ejection.
    pub backoff_max: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The state a breaker reports (`circuit_breaker_state`: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    /// Ejected until `until`; the next ejection lasts `backoff × 2`.
    Open {
        until: Instant,
        backoff: Duration,
    },
    /// One probe is out (or may go out when `probing` is false); `backoff` is the last ejection.
    HalfOpen {
        probing: bool,
        backoff: Duration,
    },
}

/// Calls and failures of one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (since the breaker was made) this bucket counts.
    slice: u64,
    calls: u32,
    failures: u32,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
}

/// The breaker of one endpoint of one target.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
    born: Instant,
    target: String,
    endpoint: String,
}

/// Why a call may not go to this endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When a probe may go out at the earliest.
    pub retry_in: Duration,
}

/// A call admitted by the breaker. Record its outcome; dropped unrecorded (the caller went
/// away), it counts for nothing, and a probe slot is given back.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Permit<'_> {
    /// The endpoint answered (a business error is an answer).
    pub fn success(mut self) {
        self.recorded = true;
        self.breaker.record(self.probe, true);
    }

    /// The endpoint failed in a way that says it is unhealthy.
    pub fn failure(mut self) {
        self.recorded = true;
        self.breaker.record(self.probe, false);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.lock();
            if let Phase::HalfOpen { probing, .. } = &mut state.phase {
                *probing = false;
            }
        }
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings, target: &str, endpoint: &str) -> Self {
        let breaker = Self {
            settings,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive: 0,
                buckets: [Bucket::default(); BUCKETS],
            }),
            born: Instant::now(),
            target: target.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        breaker.gauge(BreakerState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("circuit breaker lock")
    }

    /// The state now (an open breaker whose backoff has passed reports half-open).
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until, .. } if Instant::now() < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call would be admitted now (for the balancer's choice; [`Self::admit`] decides).
    pub fn available(&self) -> bool {
        match self.lock().phase {
            Phase::Closed => true,
            Phase::Open { until, .. } => Instant::now() >= until,
            Phase::HalfOpen { probing, .. } => !probing,
        }
    }

    /// How long until this breaker may admit a call (None: it would now). Changes nothing.
    pub fn retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        match self.lock().phase {
            Phase::Open { until, .. } if now < until => Some(until - now),
            Phase::HalfOpen { probing: true, .. } => Some(self.settings.backoff_min.min(Duration::from_secs(1))),
            _ => None,
        }
    }

    /// Lets a call through, or says when to come back.
    pub fn admit(&self) -> Result<Permit<'_>, Rejected> {
        let mut state = self.lock();
        let now = Instant::now();
        match state.phase {
            Phase::Closed => Ok(Permit {
                breaker: self,
                probe: false,
                recorded: false,
            }),
            Phase::Open { until, backoff } => {
                if now < until {
                    return Err(Rejected { retry_in: until - now });
                }
                state.phase = Phase::HalfOpen { probing: true, backoff };
                drop(state);
                self.transition(BreakerState::HalfOpen);
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    recorded: false,
                })
            }
            Phase::HalfOpen { probing: true, .. } => Err(Rejected {
                retry_in: self.settings.backoff_min.min(Duration::from_secs(1)),
            }),
            Phase::HalfOpen {
                probing: false,
                backoff,
            } => {
                state.phase = Phase::HalfOpen { probing: true, backoff };
                Ok(Permit {
                    breaker: self,
                    probe: true,
                    recorded: false,
                })
            }
        }
    }

    fn slice(&self, now: Instant) -> u64 {
        let width = (self.settings.window / BUCKETS as u32).max(Duration::from_millis(1));
        (now.duration_since(self.born).as_nanos() / width.as_nanos()) as u64
    }

    fn record(&self, probe: bool, ok: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        let changed = match (&state.phase, probe) {
            (Phase::HalfOpen { backoff, .. }, true) => {
                if ok {
                    state.phase = Phase::Closed;
                    state.consecutive = 0;
                    state.buckets = [Bucket::default(); BUCKETS];
                    Some(BreakerState::Closed)
                } else {
                    let backoff = (*backoff * 2).min(self.settings.backoff_max);
                    state.phase = Phase::Open {
                        until: now + jittered(backoff),
                        backoff,
                    };
                    Some(BreakerState::Open)
                }
            }
            // An answer from a call admitted before the breaker opened changes nothing.
            (Phase::Open { .. } | Phase::HalfOpen { .. }, _) => None,
            (Phase::Closed, _) => {
                let slice = self.slice(now);
                let bucket = &mut state.buckets[(slice % BUCKETS as u64) as usize];
                if bucket.slice != slice {
                    *bucket = Bucket {
                        slice,
                        ..Bucket::default()
                    };
                }
                bucket.calls += 1;
                if ok {
                    state.consecutive = 0;
                    None
                } else {
                    bucket.failures += 1;
                    state.consecutive += 1;
                    let oldest = slice.saturating_sub(BUCKETS as u64 - 1);
                    let (calls, failures) = state
                        .buckets
                        .iter()
                        .filter(|b| b.slice >= oldest && b.slice <= slice)
                        .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
                    let too_many_in_a_row = state.consecutive >= self.settings.consecutive_failures;
                    let too_high_a_rate = calls >= self.settings.min_calls
                        && f64::from(failures) >= self.settings.failure_rate * f64::from(calls);
                    if too_many_in_a_row || too_high_a_rate {
                        let backoff = self.settings.backoff_min;
                        state.phase = Phase::Open {
                            until: now + jittered(backoff),
                            backoff,
                        };
                        Some(BreakerState::Open)
                    } else {
                        None
                    }
                }
            }
        };
        drop(state);
        if let Some(to) = changed {
            self.transition(to);
        }
    }

    fn gauge(&self, state: BreakerState) {
        metrics::gauge!("circuit_breaker_state", "target" => self.target.clone(), "endpoint" => self.endpoint.clone())
            .set(state as i32 as f64);
    }

    fn transition(&self, to: BreakerState) {
        match to {
            BreakerState::Open => {
                tracing::warn!(target_service = %self.target, endpoint = %self.endpoint, "circuit breaker open")
            }
            _ => {
                tracing::info!(target_service = %self.target, endpoint = %self.endpoint, state = to.label(), "circuit breaker")
            }
        }
        self.gauge(to);
        metrics::counter!(
            "circuit_breaker_transitions_total",
            "target" => self.target.clone(),
            "endpoint" => self.endpoint.clone(),
            "to" => to.label()
        )
        .increment(1);
    }
}

impl Drop for Breaker {
    /// An endpoint that left the target (DNS no longer lists it) leaves no open breaker behind
    /// in the metrics, so no alert fires for a pod that is gone.
    fn drop(&mut self) {
        self.gauge(BreakerState::Closed);
    }
}

/// `backoff` less up to a quarter, so replicas that failed together do not probe together.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(1.0 - fastrand::f64() * 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings::default(), "storefront", "127.0.0.1:1")
    }

    fn fail(b: &Breaker, n: usize) {
        for _ in 0..n {
            b.admit().expect("admitted").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn five_failures_in_a_row_open_it_and_it_fails_fast() {
        let b = breaker();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        let rejected = b.admit().unwrap_err();
        assert!(rejected.retry_in <= Duration::from_secs(1) && rejected.retry_in >= Duration::from_millis(750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_run_of_failures() {
        let b = breaker();
        fail(&b, 4);
        b.admit().unwrap().success();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_of_twenty_calls_failing_within_the_window_opens_it() {
        let b = breaker();
        for i in 0..20 {
            let permit = b.admit().expect("closed until the 20th call");
            // Alternating: never 5 in a row; the 20th call is the 10th failure.
            if i % 2 == 1 { permit.failure() } else { permit.success() }
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let b = breaker();
        for i in 0..18 {
            let permit = b.admit().unwrap();
            if i % 2 == 0 { permit.failure() } else { permit.success() }
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        b.admit().unwrap().failure();
        b.admit().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_backoff_exactly_one_probe_goes_out() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = b.admit().expect("the probe");
        for _ in 0..100 {
            assert!(b.admit().is_err(), "a second call while the probe is out");
        }
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_it_for_longer() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        // The second ejection lasts 2 s less up to 25 %: still open after 1.4 s, not after 2 s.
        tokio::time::advance(Duration::from_millis(1400)).await;
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_stops_growing_at_its_cap() {
        let b = breaker();
        fail(&b, 5);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(61)).await;
            b.admit().unwrap().failure();
        }
        let rejected = b.admit().unwrap_err();
        assert!(rejected.retry_in <= Duration::from_secs(60));
        assert!(rejected.retry_in >= Duration::from_secs(45));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_go() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.admit().unwrap());
        assert!(b.admit().is_ok());
    }
}
