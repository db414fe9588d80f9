//! Faults the sandbox injects on demand (`POST /sandbox/faults`), to rehearse what Razorpay and
//! the network do on a bad day: slow or missing answers, 429 and 5xx, webhooks lost, sent twice,
//! late or out of order.
use serde::{Deserialize, Serialize};

/// The faults in force. Posting a set replaces the previous one; absent fields are off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every `/v1` answer.
    pub api_latency_ms: u64,
    /// Share of `/v1` calls that get no answer until the client gives up (or the sandbox stops);
    /// the call has no effect.
    pub api_timeout_rate: f64,
    /// Share of `/v1` calls answered 429 (with `Retry-After: 1`), without effect.
    pub rate_429: f64,
    /// Share of `/v1` calls answered 5xx, without effect.
    pub rate_5xx: f64,
    /// Share of webhook events never sent.
    pub webhook_drop_rate: f64,
    /// Share of webhook events sent twice (same event id, same body).
    pub webhook_duplicate_rate: f64,
    /// Delay before an event's first delivery.
    pub webhook_delay_ms: u64,
    /// Newest event first, ignoring the per-order order.
    pub webhook_reorder: bool,
}

/// The longest latency or delay accepted (one hour).
const MAX_MS: u64 = 3_600_000;

/// A fault value out of range: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidFault {
    pub field: &'static str,
    pub problem: String,
}

impl Faults {
    /// Rates between 0.0 and 1.0, durations at most an hour.
    pub fn validate(&self) -> Result<(), InvalidFault> {
        let rates = [
            ("api_timeout_rate", self.api_timeout_rate),
            ("rate_429", self.rate_429),
            ("rate_5xx", self.rate_5xx),
            ("webhook_drop_rate", self.webhook_drop_rate),
            ("webhook_duplicate_rate", self.webhook_duplicate_rate),
        ];
        for (field, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(InvalidFault {
                    field,
                    problem: "must be a rate between 0.0 and 1.0".into(),
                });
            }
        }
        for (field, ms) in [
            ("api_latency_ms", self.api_latency_ms),
            ("webhook_delay_ms", self.webhook_delay_ms),
        ] {
            if ms > MAX_MS {
                return Err(InvalidFault {
                    field,
                    problem: format!("must be at most {MAX_MS} ms"),
                });
            }
        }
        Ok(())
    }
}

/// True with probability `rate` (never for 0.0, always for 1.0).
pub(crate) fn happens(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || fastrand::f64() < rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert_eq!(Faults::default().validate(), Ok(()));
        let faults = Faults {
            rate_429: 1.5,
            ..Faults::default()
        };
        assert_eq!(faults.validate().unwrap_err().field, "rate_429");
        let faults = Faults {
            webhook_drop_rate: f64::NAN,
            ..Faults::default()
        };
        assert_eq!(faults.validate().unwrap_err().field, "webhook_drop_rate");
        let faults = Faults {
            api_timeout_rate: -0.1,
            ..Faults::default()
        };
        assert!(faults.validate().is_err());
        let faults = Faults {
            webhook_delay_ms: MAX_MS + 1,
            ..Faults::default()
        };
        assert_eq!(faults.validate().unwrap_err().field, "webhook_delay_ms");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Faults>(r#"{"rate_4299": 1.0}"#).is_err());
        let faults: Faults = serde_json::from_str(r#"{"rate_429": 1.0}"#).unwrap();
        assert_eq!(faults.rate_429, 1.0);
        assert_eq!(faults.rate_5xx, 0.0);
    }

    #[test]
    fn edge_rates_are_certain() {
        assert!((0..100).all(|_| happens(1.0)));
        assert!((0..100).all(|_| !happens(0.0)));
    }
}
