//! The deadline of the call being served, so a service calling another service passes on what
//! is left of its own deadline instead of starting a fresh budget. The server stack reads the
//! caller's `grpc-timeout` and runs the handler inside [`scope`]; the client stack reads
//! [`remaining`] when it starts a call.
use std::{future::Future, time::Duration};

use tokio::time::Instant;

tokio::task_local! {
    static CALL_DEADLINE: Instant;
}

/// Runs `fut` with `deadline` as the deadline of the call being served (no deadline: unchanged).
pub async fn scope<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    match deadline {
        Some(at) => CALL_DEADLINE.scope(at, fut).await,
        None => fut.await,
    }
}

/// When the call being served must be answered, if its caller set a deadline.
pub fn current() -> Option<Instant> {
    CALL_DEADLINE.try_with(|at| *at).ok()
}

/// Parses a `grpc-timeout` value (`250m`, `3S`, …: the gRPC over HTTP/2 spec's units).
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed() {
        let parse = parse_grpc_timeout;
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("123456789S"), None, "the spec allows at most 8 digits");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_seen_inside_its_scope_only() {
        let at = Instant::now() + Duration::from_secs(2);
        assert_eq!(current(), None);
        assert_eq!(scope(Some(at), async { current() }).await, Some(at));
        assert_eq!(scope(None, async { current() }).await, None);
    }
}
