//! Sending email: over SMTP (lettre on ring-only rustls) when `THALI_SMTP_URL` is set, else as
//! `.eml` files (real MIME, one per email, named by the email's id) under `<data dir>/mail/`.
//! Every send is bounded by a whole-send timeout: lettre's own timeout covers the connection,
//! not a server that stalls mid-session.
use std::{path::PathBuf, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::authentication::Credentials,
};
use uuid::Uuid;

/// One email ready to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: Uuid,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a send failed; `permanent` ones are not tried again (a 5xx answer, a bad address).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub permanent: bool,
    pub message: String,
}

impl SendError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            message: message.into(),
        }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self {
            permanent: false,
            message: message.into(),
        }
    }
}

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

/// Where mail goes.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    timeout: Duration,
}

/// A mail setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct MailConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl Mailer {
    /// SMTP at `url` (`smtp://host:25`, `smtp://host:587?tls=required`, `smtps://user@host:465`),
    /// the password read from `password_file`. The URL must not carry the password.
    pub fn smtp(
        url: &str,
        password_file: Option<&std::path::Path>,
        from: &str,
        timeout: Duration,
    ) -> Result<Self, MailConfigError> {
        let bad = |key, reason: String| MailConfigError { key, reason };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("smtp_url", "must look like smtps://user@host:465".into()))?;
        if scheme != "smtp" && scheme != "smtps" {
            return Err(bad("smtp_url", "must start with smtp:// or smtps://".into()));
        }
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let user = authority.rsplit_once('@').map(|(user, _)| user);
        if user.is_some_and(|u| u.contains(':')) {
            return Err(bad(
                "smtp_url",
                "must not carry a password: put it in the file named by smtp_password_file".into(),
            ));
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| bad("smtp_url", e.to_string()))?
            .timeout(Some(timeout));
        match (user, password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file)
                    .map_err(|e| bad("smtp_password_file", format!("{}: {e}", file.display())))?;
                builder = builder.credentials(Credentials::new(user.to_owned(), password.trim_end().to_owned()));
            }
            (Some(_), None) => {
                return Err(bad(
                    "smtp_password_file",
                    "the SMTP URL names a user: give the password file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "smtp_url",
                    "name the user (smtps://user@host) the password is for".into(),
                ));
            }
            (None, None) => {}
        }
        Ok(Self {
            transport: Transport::Smtp(builder.build()),
            from: parse_from(from)?,
            timeout,
        })
    }

    /// `.eml` files under `dir` (created if missing).
    pub fn files(dir: PathBuf, from: &str) -> Result<Self, MailConfigError> {
        std::fs::create_dir_all(&dir).map_err(|e| MailConfigError {
            key: "data_dir",
            reason: format!("{}: {e}", dir.display()),
        })?;
        Ok(Self {
            transport: Transport::Files(dir),
            from: parse_from(from)?,
            timeout: Duration::from_secs(30),
        })
    }

    /// Where mail goes, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp(_) => "SMTP".to_owned(),
            Transport::Files(dir) => format!(".eml files in {}", dir.display()),
        }
    }

    /// The MIME message of `email`: `multipart/alternative` text and HTML, its Message-ID
    /// derived from the email's id (a resend is recognisably the same message).
    pub fn message(&self, email: &Outgoing) -> Result<Message, SendError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| SendError::permanent(format!("recipient {:?}: {e}", email.to)))?;
        let domain = self.from.email.domain().to_owned();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(format!("<{}@{domain}>", email.id)))
            .date_now()
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| SendError::permanent(format!("building the message: {e}")))
    }

    /// Sends `email`; returns where it went (the server's answer, or the file).
    pub async fn send(&self, email: &Outgoing) -> Result<String, SendError> {
        let message = self.message(email)?;
        match &self.transport {
            Transport::Smtp(smtp) => match tokio::time::timeout(self.timeout, smtp.send(message)).await {
                Err(_) => Err(SendError::transient(format!(
                    "no answer from the SMTP server within {} s",
                    self.timeout.as_secs()
                ))),
                Ok(Ok(response)) => Ok(format!(
                    "SMTP {}: {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )),
                Ok(Err(e)) if e.is_permanent() => Err(SendError::permanent(format!("SMTP refused: {e}"))),
                Ok(Err(e)) => Err(SendError::transient(format!("SMTP: {e}"))),
            },
            Transport::Files(dir) => {
                // Written whole, then renamed: a reader never sees half a message, and a resend
                // of the same email replaces its file instead of adding one.
                let path = dir.join(format!("{}.eml", email.id));
                let partial = dir.join(format!(".{}.eml.partial", email.id));
                tokio::fs::write(&partial, message.formatted())
                    .await
                    .map_err(|e| SendError::transient(format!("{}: {e}", partial.display())))?;
                tokio::fs::rename(&partial, &path)
                    .await
                    .map_err(|e| SendError::transient(format!("{}: {e}", path.display())))?;
                Ok(path.display().to_string())
            }
        }
    }
}

fn parse_from(from: &str) -> Result<Mailbox, MailConfigError> {
    from.parse().map_err(|e| MailConfigError {
        key: "mail_from",
        reason: format!("{from:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pooled transport starts a task: it is built inside a runtime.
    #[tokio::test]
    async fn the_smtp_url_carries_no_password_and_a_user_needs_one() {
        let t = Duration::from_secs(5);
        let from = "Thali <no-reply@thali.test>";
        assert!(Mailer::smtp("smtp://127.0.0.1:2525", None, from, t).is_ok());
        let err = Mailer::smtp("smtps://user:secret@mail.example.com:465", None, from, t)
            .err()
            .unwrap();
        assert_eq!(err.key, "smtp_url");
        let err = Mailer::smtp("smtps://user@mail.example.com:465", None, from, t)
            .err()
            .unwrap();
        assert_eq!(err.key, "smtp_password_file");
        assert!(Mailer::smtp("http://mail.example.com", None, from, t).is_err());
        assert!(Mailer::smtp("smtp://127.0.0.1:2525", None, "not an address", t).is_err());
    }
}
