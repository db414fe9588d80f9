//! Security events: every login, lockout, refresh-token reuse, API key event and authorisation
//! failure goes through [`security_event`], as one structured log line with the actor, the
//! target, the client address and the trace id. (The tamper-evident audit store will consume
//! these from here.)

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEvent {
    LoginSucceeded,
    LoginFailed,
    LockedOut,
    RefreshReused,
    Logout,
    ApiKeyCreated,
    ApiKeyUsed,
    ApiKeyDenied,
    ApiKeyRevoked,
    AccessDenied,
    AuthenticationFailed,
}

impl SecurityEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityEvent::LoginSucceeded => "login.succeeded",
            SecurityEvent::LoginFailed => "login.failed",
            SecurityEvent::LockedOut => "login.locked_out",
            SecurityEvent::RefreshReused => "refresh_token.reused",
            SecurityEvent::Logout => "logout",
            SecurityEvent::ApiKeyCreated => "api_key.created",
            SecurityEvent::ApiKeyUsed => "api_key.used",
            SecurityEvent::ApiKeyDenied => "api_key.denied",
            SecurityEvent::ApiKeyRevoked => "api_key.revoked",
            SecurityEvent::AccessDenied => "access.denied",
            SecurityEvent::AuthenticationFailed => "authentication.failed",
        }
    }
}

/// Records a security event. `actor` is who acted (account id, `svc:…`, key id, or the email
/// tried), `target` what it acted on, `client_address` where the request came from.
pub fn security_event(event: SecurityEvent, actor: &str, target: &str, client_address: &str, detail: &str) {
    let trace_id = crate::telemetry::current_trace_id();
    tracing::info!(
        target: "thali::security",
        event = event.as_str(),
        actor,
        subject = target,
        client_address,
        detail,
        trace_id = trace_id.as_str(),
        "security event"
    );
}
