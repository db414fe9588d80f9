//! The gRPC client stack. A call meets it in this order, all of it in [`Client::call`]:
//!
//! 1. **deadline** — one budget for the whole call: the configured RPC timeout, shortened by the
//!    caller's own timeout and by what is left of the call this process is serving
//!    ([`crate::deadline`]); every attempt carries the time that remains as `grpc-timeout`;
//! 2. **retry** — at the typed-client level (a tonic body cannot be replayed inside a tower
//!    layer): UNAVAILABLE and transport errors, RESOURCE_EXHAUSTED only with RetryInfo; a call
//!    that changes state only if its request is retry-safe ([`thali_proto::RetryPolicy`], one
//!    table per service next to its client) or provably did not run; full-jitter backoff, never
//!    past the deadline; a retry budget shared by every clone of the target (tower's `TpsBudget`);
//! 3. **balance** — power of two choices over the target's endpoints whose breaker admits calls,
//!    preferring endpoints this call has not tried ([`balance`]);
//! 4. **circuit breaker** per endpoint ([`breaker`]): while every endpoint is ejected the call
//!    fails at once with UNAVAILABLE + RetryInfo and never touches the network;
//! 5. then, on the endpoint's channel: service token → trace context → connection ([`layers`]).
pub mod balance;
pub mod breaker;
pub mod layers;
pub mod retry;

use std::{future::Future, sync::Arc, time::Duration};

use thali_proto::RetryPolicy;
use tokio::time::Instant;
use tonic::{
    IntoRequest, Status,
    transport::{Channel, Endpoint as TonicEndpoint},
};
use tower::{
    Layer,
    retry::budget::{Budget, TpsBudget},
};
use tracing::Instrument;

pub use balance::Discovery;
pub use breaker::{BreakerSettings, BreakerState};
pub use layers::{InjectTrace, InjectTraceLayer, ServiceToken, ServiceTokenLayer};
pub use retry::RetrySettings;

use crate::auth::Signer;

/// The stack of one endpoint under the typed clients: service token → trace context → channel.
pub type GrpcChannel = ServiceToken<InjectTrace<Channel>>;

/// Who this process is when it calls another Thali service.
#[derive(Clone)]
pub struct ServiceIdentity {
    /// This service's name, e.g. `facade`.
    pub name: String,
    pub signer: Arc<Signer>,
}

/// A boxed error, as tonic's clients expect from their transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every number of the client stack; each is a setting (see `Config::client_settings`).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Budget of one whole call, retries included (`THALI_RPC_TIMEOUT_MS`).
    pub deadline: Duration,
    /// Time allowed to open a connection to an endpoint.
    pub connect_timeout: Duration,
    pub retry: RetrySettings,
    pub breaker: BreakerSettings,
    /// How often a target given by DNS name is resolved again.
    pub resolve_every: Duration,
    /// TLS towards `https://` endpoints: the CA the servers chain to and, for mutual TLS, this
    /// part's own certificate (see `Config::client_tls`).
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            resolve_every: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// One service this process calls: its endpoints (each with a breaker), its retry budget and
/// settings. Cheap to clone; every clone shares them.
#[derive(Clone)]
pub struct Target(Arc<TargetInner>);

struct TargetInner {
    name: String,
    settings: ClientSettings,
    budget: TpsBudget,
    endpoints: balance::EndpointSet,
    token: ServiceTokenLayer,
    /// The name a server's certificate must carry when the target is a DNS name resolved to
    /// addresses (its endpoints' URLs then hold addresses, not the name).
    tls_name: Option<String>,
}

/// A target that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[error("target `{target}`: {reason}")]
pub struct TargetError {
    target: String,
    reason: String,
}

impl Target {
    /// The target `name` (a service: `storefront`, `identity`, …) at `spec`: a comma-separated
    /// list of URLs, or one URL whose host is a DNS name, resolved now and every
    /// `resolve_every`. Connections open on first use, so a target that is down at start does
    /// not stop the caller from starting.
    pub async fn new(
        name: &str,
        spec: &str,
        identity: &ServiceIdentity,
        settings: ClientSettings,
    ) -> Result<Self, TargetError> {
        let error = |reason: String| TargetError {
            target: name.to_owned(),
            reason,
        };
        let discovery = Discovery::parse(spec).map_err(error)?;
        let retry = &settings.retry;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&retry.budget_window)
            || !(0.0..=1000.0).contains(&retry.budget_ratio)
        {
            return Err(error(
                "the retry budget needs a 1-60 s window and a ratio of 0-1000".into(),
            ));
        }
        let budget = TpsBudget::new(retry.budget_window, retry.budget_min_per_sec, retry.budget_ratio);
        // Present from the start, so the first refusal shows as an increase.
        metrics::counter!("rpc_client_retry_budget_exhausted_total", "target" => name.to_owned()).increment(0);
        let target = Target(Arc::new(TargetInner {
            name: name.to_owned(),
            budget,
            endpoints: balance::EndpointSet::default(),
            token: ServiceTokenLayer::new(identity.clone(), name),
            tls_name: match &discovery {
                Discovery::Dns { host, .. } => Some(host.clone()),
                Discovery::Static(_) => None,
            },
            settings,
        }));
        if let Discovery::Static(urls) = &discovery {
            for url in urls {
                TonicEndpoint::from_shared(url.clone()).map_err(|e| error(format!("`{url}`: {e}")))?;
            }
        }
        let first = tokio::time::timeout(target.0.settings.connect_timeout, discovery.resolve()).await;
        if let Ok(Some(urls)) = first {
            target.0.endpoints.update(&urls, |url| target.endpoint(url).ok());
        }
        if matches!(discovery, Discovery::Dns { .. }) {
            let weak = Arc::downgrade(&target.0);
            let every = target.0.settings.resolve_every;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { break };
                    if let Some(urls) = discovery.resolve().await {
                        let target = Target(inner);
                        target.0.endpoints.update(&urls, |url| target.endpoint(url).ok());
                    }
                }
            });
        }
        Ok(target)
    }

    /// A new endpoint at `url`, with its own lazily connected channel and breaker.
    fn endpoint(&self, url: &str) -> Result<balance::Endpoint, TargetError> {
        let settings = &self.0.settings;
        let tls = match &settings.tls {
            Some(tls) if url.starts_with("https://") => {
                Some(tls.connector(self.0.tls_name.as_deref()).map_err(|e| TargetError {
                    target: self.0.name.clone(),
                    reason: e.to_string(),
                })?)
            }
            _ => None,
        };
        let stack = endpoint_stack(url, &self.0.token, settings.connect_timeout, tls)?;
        let label = balance::label(url);
        Ok(balance::Endpoint::new(
            label.clone(),
            stack,
            breaker::Breaker::new(settings.breaker.clone(), &self.0.name, &label),
        ))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether some endpoint would take a call now (its breaker is not open).
    pub fn is_up(&self) -> bool {
        self.0.endpoints.snapshot().iter().any(|e| e.breaker.available())
    }

    /// Each endpoint and its breaker's state, for health pages.
    pub fn endpoints(&self) -> Vec<(String, BreakerState)> {
        self.0
            .endpoints
            .snapshot()
            .iter()
            .map(|e| (e.addr.clone(), e.breaker.state()))
            .collect()
    }

    /// UNAVAILABLE for a call no endpoint may take, with the time until a probe may go.
    fn nowhere_to_go(&self, endpoints: &[Arc<balance::Endpoint>]) -> Status {
        let retry_in = endpoints
            .iter()
            .filter_map(|e| e.breaker.retry_in())
            .min()
            .unwrap_or(Duration::from_secs(1));
        let reason = if endpoints.is_empty() {
            "NO_ENDPOINTS"
        } else {
            "CIRCUIT_OPEN"
        };
        crate::errors::unavailable(
            reason,
            format!("{} is unavailable: no endpoint takes calls now", self.0.name),
            retry_in.max(Duration::from_millis(1)),
        )
    }
}

fn endpoint_stack(
    url: &str,
    token: &ServiceTokenLayer,
    connect_timeout: Duration,
    tls: Option<crate::tls::TlsConnect>,
) -> Result<GrpcChannel, TargetError> {
    let invalid = |e: tonic::transport::Error| TargetError {
        target: url.to_owned(),
        reason: e.to_string(),
    };
    let endpoint = match &tls {
        // Thali's own connector makes the TLS session (TLS 1.3, a reloading client
        // certificate); tonic sees a plain connection, and requests still say `https`.
        Some(_) => TonicEndpoint::from_shared(url.replacen("https://", "http://", 1))
            .map_err(invalid)?
            .origin(url.parse().map_err(|e| TargetError {
                target: url.to_owned(),
                reason: format!("{e}"),
            })?),
        None => TonicEndpoint::from_shared(url.to_owned()).map_err(invalid)?,
    };
    let endpoint = endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let channel = match tls {
        Some(connector) => endpoint.connect_with_connector_lazy(connector),
        None => endpoint.connect_lazy(),
    };
    Ok(token.layer(InjectTraceLayer.layer(channel)))
}

/// One endpoint's channel with this process's credentials and trace context, and nothing else
/// (no deadline, retry, breaker or balancing): for tests and tools that want the raw call, such
/// as the stack's own benchmark.
pub fn endpoint_channel(
    url: &str,
    target: &str,
    identity: &ServiceIdentity,
    connect_timeout: Duration,
) -> Result<GrpcChannel, TargetError> {
    endpoint_stack(
        url,
        &ServiceTokenLayer::new(identity.clone(), target),
        connect_timeout,
        None,
    )
}

/// A typed client (`StorefrontServiceClient`, …) behind the stack of one [`Target`].
pub struct Client<C> {
    target: Target,
    make: fn(GrpcChannel) -> C,
}

impl<C> Clone for Client<C> {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            make: self.make,
        }
    }
}

impl<C> Client<C> {
    /// `make` builds the typed client over one endpoint, e.g. `StorefrontServiceClient::new`.
    pub fn new(target: Target, make: fn(GrpcChannel) -> C) -> Self {
        Self { target, make }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Makes one call through the whole stack; `call` makes one attempt with the typed client,
    /// e.g. `|mut c, r| async move { c.get_storefront(r).await }`.
    pub async fn call<Req, Res, F, Fut>(
        &self,
        request: impl IntoRequest<Req>,
        call: F,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Req: RetryPolicy + Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
    {
        // One client span for the whole call, retries included: the traceparent each attempt
        // carries names it, so the callee's server span is its child and one trace shows
        // caller → call → callee.
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format_args!("{}/{}", self.target.0.name, Req::METHOD),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.method = Req::METHOD,
            peer.service = %self.target.0.name,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            thali.retries = tracing::field::Empty,
        );
        let record = span.clone();
        let outcome = self.call_in_span(request, call).instrument(span).await;
        let code = match &outcome {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        record.record("rpc.grpc.status_code", code as i32);
        if crate::telemetry::is_server_fault(code) {
            record.record("otel.status_code", "error");
        }
        outcome
    }

    async fn call_in_span<Req, Res, F, Fut>(
        &self,
        request: impl IntoRequest<Req>,
        call: F,
    ) -> Result<tonic::Response<Res>, Status>
    where
        Req: RetryPolicy + Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Res>, Status>>,
    {
        let target = &*self.target.0;
        let started = Instant::now();
        let (mut metadata, _, message) = request.into_request().into_parts();

        // 1. Deadline: ours, the caller's own, and what is left of the call being served.
        let mut budget = target.settings.deadline;
        if let Some(own) = metadata
            .remove("grpc-timeout")
            .and_then(|v| v.to_str().ok().and_then(crate::deadline::parse_grpc_timeout))
        {
            budget = budget.min(own);
        }
        let mut deadline = started + budget;
        if let Some(incoming) = crate::deadline::current() {
            deadline = deadline.min(incoming);
        }

        let retry_safe = message.retry_safe();
        target.budget.deposit();
        let endpoints = target.endpoints.snapshot();
        let mut tried: Vec<usize> = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        let mut retries = 0u32;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break Err(Status::deadline_exceeded(format!(
                    "{}: no answer within the call's deadline",
                    target.name
                )));
            }
            // 3. and 4. An endpoint whose breaker takes the call, or fail at once.
            let Some(i) = balance::choose(&endpoints, &tried, &refused) else {
                break Err(self.target.nowhere_to_go(&endpoints));
            };
            let endpoint = &endpoints[i];
            let Ok(permit) = endpoint.breaker.admit() else {
                refused.push(i);
                continue;
            };

            // 5. One attempt, carrying the time that remains.
            let mut attempt = tonic::Request::from_parts(metadata.clone(), tonic::Extensions::new(), message.clone());
            attempt.set_timeout(remaining);
            let in_flight = endpoint.start_call();
            let answer =
                match tokio::time::timeout(remaining, call((self.make)(endpoint.channel.clone()), attempt)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{}: no answer within the call's deadline",
                        target.name
                    ))),
                };
            drop(in_flight);

            // 2. What the outcome says about the endpoint, and whether to try again.
            let verdict = retry::classify(&answer);
            if verdict.endpoint_failed {
                permit.failure();
            } else {
                permit.success();
            }
            let Some(reason) = verdict.retry else { break answer };
            if !(retry_safe || verdict.not_run) {
                break answer;
            }
            let pause = retry::backoff(&target.settings.retry, retries).max(verdict.delay.unwrap_or_default());
            if Instant::now() + pause >= deadline {
                break answer;
            }
            if !target.budget.withdraw() {
                metrics::counter!("rpc_client_retry_budget_exhausted_total", "target" => target.name.clone())
                    .increment(1);
                break answer;
            }
            metrics::counter!(
                "rpc_client_retries_total",
                "target" => target.name.clone(),
                "method" => Req::METHOD,
                "reason" => reason
            )
            .increment(1);
            tracing::debug!(target_service = %target.name, method = Req::METHOD, endpoint = %endpoint.addr, reason, "retrying");
            tried.push(i);
            retries += 1;
            tracing::Span::current().record("thali.retries", retries);
            tokio::time::sleep(pause).await;
        };
        // A failure of the connection (not an answer of the service) is UNAVAILABLE to the
        // caller, whatever code tonic gave it: the facade answers 503, never 499 or 500.
        let outcome = outcome.map_err(|status| {
            if std::error::Error::source(&status).is_some() {
                crate::errors::unavailable(
                    "UPSTREAM_UNREACHABLE",
                    format!("{} could not be reached: {}", target.name, status.message()),
                    Duration::from_secs(1),
                )
            } else {
                status
            }
        });
        let code = match &outcome {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        metrics::histogram!(
            "rpc_client_call_duration_seconds",
            "target" => target.name.clone(),
            "method" => Req::METHOD,
            "code" => format!("{code:?}")
        )
        .record(started.elapsed().as_secs_f64());
        outcome
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// This process as a test caller, with a key pair of its own.
    pub(crate) fn test_identity() -> ServiceIdentity {
        let dir = std::env::temp_dir().join(format!("thali-client-{}", uuid::Uuid::now_v7()));
        crate::auth::ensure_key_pair(&dir).unwrap();
        ServiceIdentity {
            name: "test".into(),
            signer: Arc::new(Signer::load(&dir).unwrap()),
        }
    }

    /// An endpoint stack for unit tests (connects only if called).
    pub(crate) fn test_channel(url: &str) -> GrpcChannel {
        let channel = TonicEndpoint::from_shared(url.to_owned()).unwrap().connect_lazy();
        ServiceTokenLayer::new(test_identity(), "t").layer(InjectTraceLayer.layer(channel))
    }

    use std::sync::Mutex;

    use thali_proto::storefront::v1::{
        CreateCreatorRequest, GetStorefrontRequest, GetStorefrontResponse, UpdateProfileRequest,
    };
    use tonic::Code;

    /// The typed client of these tests: it never touches its channel; the test's script answers.
    struct Fake;

    /// What the fake server saw of each attempt: when it started and the `grpc-timeout` it carried.
    #[derive(Default)]
    struct Seen {
        attempts: Mutex<Vec<(Instant, Duration)>>,
    }

    impl Seen {
        fn count(&self) -> usize {
            self.attempts.lock().unwrap().len()
        }
    }

    async fn target(endpoints: &str, settings: ClientSettings) -> Client<Fake> {
        let target = Target::new("storefront", endpoints, &test_identity(), settings)
            .await
            .unwrap();
        Client::new(target, |_| Fake)
    }

    /// Each attempt takes `takes`, then answers with `answer(attempt number)`.
    async fn call_with<Req: RetryPolicy + Clone>(
        client: &Client<Fake>,
        seen: &Seen,
        request: tonic::Request<Req>,
        takes: Duration,
        answer: impl Fn(usize) -> Result<(), Status>,
    ) -> Result<(), Status> {
        client
            .call(request, |_fake, req: tonic::Request<Req>| {
                let timeout = req
                    .metadata()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::deadline::parse_grpc_timeout)
                    .expect("every attempt carries grpc-timeout");
                let n = {
                    let mut attempts = seen.attempts.lock().unwrap();
                    attempts.push((Instant::now(), timeout));
                    attempts.len()
                };
                let outcome = answer(n);
                async move {
                    tokio::time::sleep(takes).await;
                    outcome.map(|()| tonic::Response::new(GetStorefrontResponse::default()))
                }
            })
            .await
            .map(|_| ())
    }

    fn read() -> tonic::Request<GetStorefrontRequest> {
        tonic::Request::new(GetStorefrontRequest {
            username: "chai".into(),
        })
    }

    const ONE: &str = "http://127.0.0.1:1";

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_until_an_answer() {
        let client = target(ONE, ClientSettings::default()).await;
        let seen = Seen::default();
        let answer = |n| {
            if n < 3 {
                Err(Status::unavailable("down"))
            } else {
                Ok(())
            }
        };
        call_with(&client, &seen, read(), Duration::ZERO, answer).await.unwrap();
        assert_eq!(seen.count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn business_errors_and_deadline_exceeded_are_not_retried() {
        let client = target(ONE, ClientSettings::default()).await;
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::DeadlineExceeded,
        ] {
            let seen = Seen::default();
            let err = call_with(&client, &seen, read(), Duration::ZERO, |_| Err(Status::new(code, "no")))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code);
            assert_eq!(seen.count(), 1, "{code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_change_is_retried_only_with_an_idempotency_key_or_when_it_did_not_run() {
        let client = target(ONE, ClientSettings::default()).await;
        let down = |n: usize| {
            if n < 2 {
                Err(Status::unavailable("down"))
            } else {
                Ok(())
            }
        };

        let seen = Seen::default();
        let update = tonic::Request::new(UpdateProfileRequest::default());
        assert!(call_with(&client, &seen, update, Duration::ZERO, down).await.is_err());
        assert_eq!(seen.count(), 1, "no key: not sent again");

        let seen = Seen::default();
        let keyed = tonic::Request::new(CreateCreatorRequest {
            idempotency_key: "k-1".into(),
            ..Default::default()
        });
        call_with(&client, &seen, keyed, Duration::ZERO, down).await.unwrap();
        assert_eq!(seen.count(), 2, "keyed: sent again");

        let seen = Seen::default();
        let shed = |n: usize| {
            if n < 2 {
                Err(crate::errors::unavailable(
                    retry::OVERLOADED,
                    "busy",
                    Duration::from_secs(1),
                ))
            } else {
                Ok(())
            }
        };
        let update = tonic::Request::new(UpdateProfileRequest::default());
        call_with(&client, &seen, update, Duration::ZERO, shed).await.unwrap();
        assert_eq!(seen.count(), 2, "shed before it ran: safe to send again");
    }

    #[tokio::test(start_paused = true)]
    async fn resource_exhausted_is_retried_only_when_the_server_says_when() {
        let client = target(ONE, ClientSettings::default()).await;
        let seen = Seen::default();
        let bare = |_| Err(Status::resource_exhausted("quota"));
        assert!(call_with(&client, &seen, read(), Duration::ZERO, bare).await.is_err());
        assert_eq!(seen.count(), 1);

        let seen = Seen::default();
        let told = |n: usize| {
            if n < 2 {
                Err(crate::errors::resource_exhausted(
                    "QUOTA",
                    "later",
                    Duration::from_millis(800),
                ))
            } else {
                Ok(())
            }
        };
        call_with(&client, &seen, read(), Duration::ZERO, told).await.unwrap();
        let attempts = seen.attempts.lock().unwrap();
        assert!(
            attempts[1].0 - attempts[0].0 >= Duration::from_millis(800),
            "waited as told"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_budget_is_spent() {
        let mut settings = ClientSettings::default();
        // One retry per second, nothing earned from calls.
        settings.retry.budget_window = Duration::from_secs(1);
        settings.retry.budget_min_per_sec = 1;
        settings.retry.budget_ratio = 0.0;
        // Never open the breaker in this test.
        settings.breaker.consecutive_failures = 1000;
        settings.breaker.min_calls = 1000;
        let client = target(ONE, settings).await;
        let seen = Seen::default();
        let down = |_| Err(Status::unavailable("down"));
        assert!(call_with(&client, &seen, read(), Duration::ZERO, down).await.is_err());
        assert_eq!(seen.count(), 2, "the budget's one retry");
        let seen = Seen::default();
        assert!(call_with(&client, &seen, read(), Duration::ZERO, down).await.is_err());
        assert_eq!(seen.count(), 1, "budget spent: no retry");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_carry_the_time_that_remains_and_none_starts_past_the_deadline() {
        let mut settings = ClientSettings::default();
        settings.breaker.consecutive_failures = 1000;
        let client = target(ONE, settings).await;
        let seen = Seen::default();
        let started = Instant::now();
        let err = call_with(&client, &seen, read(), Duration::from_millis(1500), |_| {
            Err(Status::unavailable("down"))
        })
        .await
        .unwrap_err();
        // The last attempt either failed too or ran out of the call's time.
        assert!(
            matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{err:?}"
        );
        let attempts = seen.attempts.lock().unwrap();
        assert!(attempts.len() >= 3, "{}", attempts.len());
        let mut last = Duration::MAX;
        for (at, timeout) in attempts.iter() {
            let elapsed = *at - started;
            assert!(elapsed < Duration::from_secs(5), "an attempt started past the deadline");
            assert_eq!(
                *timeout,
                Duration::from_secs(5) - elapsed,
                "the remaining time travels downstream"
            );
            assert!(*timeout < last);
            last = *timeout;
        }
        assert!(Instant::now() - started <= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_made_while_serving_another_passes_on_what_is_left_of_its_deadline() {
        let client = target(ONE, ClientSettings::default()).await;
        let seen = Seen::default();
        let incoming = Instant::now() + Duration::from_millis(700);
        crate::deadline::scope(Some(incoming), async {
            tokio::time::advance(Duration::from_millis(200)).await;
            call_with(&client, &seen, read(), Duration::ZERO, |_| Ok(()))
                .await
                .unwrap();
        })
        .await;
        assert_eq!(seen.attempts.lock().unwrap()[0].1, Duration::from_millis(500));

        // The caller's own shorter timeout wins too.
        let seen = Seen::default();
        let mut own = read();
        own.set_timeout(Duration::from_millis(300));
        call_with(&client, &seen, own, Duration::ZERO, |_| Ok(()))
            .await
            .unwrap();
        assert_eq!(seen.attempts.lock().unwrap()[0].1, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_fails_fast_without_calling_and_admits_one_probe() {
        let client = target(ONE, ClientSettings::default()).await;
        let seen = Seen::default();
        let down = |_| Err(Status::unavailable("down"));
        // Deadline exceeded is not retried: five calls, five failures, breaker open.
        for _ in 0..5 {
            let _ = call_with(&client, &seen, read(), Duration::ZERO, |_| {
                Err(Status::deadline_exceeded("slow"))
            })
            .await;
        }
        assert_eq!(seen.count(), 5);
        assert_eq!(client.target().endpoints()[0].1, BreakerState::Open);
        let before = Instant::now();
        let err = call_with(&client, &seen, read(), Duration::ZERO, down)
            .await
            .unwrap_err();
        assert_eq!(Instant::now(), before, "failed at once");
        assert_eq!(seen.count(), 5, "the endpoint was not called");
        assert_eq!(err.code(), Code::Unavailable);
        let retry = tonic_types::StatusExt::get_details_retry_info(&err).unwrap();
        assert!(retry.retry_delay.unwrap() <= Duration::from_secs(1));

        // After the backoff, many callers at once: exactly one probe reaches the endpoint.
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe_seen = Seen::default();
        let calls = (0..20).map(|_| call_with(&client, &probe_seen, read(), Duration::from_millis(100), |_| Ok(())));
        let results = futures::future::join_all(calls).await;
        assert_eq!(probe_seen.count(), 1, "one probe");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert_eq!(client.target().endpoints()[0].1, BreakerState::Closed);
        call_with(&client, &probe_seen, read(), Duration::ZERO, |_| Ok(()))
            .await
            .unwrap();
    }
}
