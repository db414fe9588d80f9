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
    PasswordResetRequested,
    PasswordReset,
    EmailVerified,
    RateLimited,
    AccountDisabled,
    AccountEnabled,
    RoleChanged,
    RegistrationOfTakenEmail,
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
            SecurityEvent::PasswordResetRequested => "password_reset.requested",
            SecurityEvent::PasswordReset => "password_reset.done",
            SecurityEvent::EmailVerified => "email.verified",
            SecurityEvent::RateLimited => "rate_limited",
            SecurityEvent::AccountDisabled => "admin.account_disabled",
            SecurityEvent::AccountEnabled => "admin.account_enabled",
            SecurityEvent::RoleChanged => "admin.role_changed",
            SecurityEvent::RegistrationOfTakenEmail => "registration.email_taken",
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

/// Records that `who` was refused `target` (not the owner, missing role): the actor is the
/// account, with the partner key when one acted for it.
pub fn access_denied(who: &crate::auth::Principal, target: &str, detail: &str) {
    let actor = who
        .api_key
        .as_ref()
        .map(|k| format!("{} (key {})", who.subject, k.key_id));
    security_event(
        SecurityEvent::AccessDenied,
        actor.as_deref().unwrap_or(&who.subject),
        target,
        "",
        detail,
    );
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::testing::CapturedWriter;

    #[test]
    fn an_event_carries_actor_target_address_and_kind() {
        let out = CapturedWriter::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            security_event(
                SecurityEvent::LockedOut,
                "asha@example.com",
                "account",
                "203.0.113.7",
                "30 s",
            );
        });
        let text = out.text();
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["target"], "thali::security");
        let fields = &line["fields"];
        assert_eq!(fields["event"], "login.locked_out");
        assert_eq!(fields["actor"], "asha@example.com");
        assert_eq!(fields["subject"], "account");
        assert_eq!(fields["client_address"], "203.0.113.7");
        assert!(fields.get("trace_id").is_some());
    }
}
