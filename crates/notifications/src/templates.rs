//! Message templates (ADR 0012): minijinja, compiled into the binary, one set per event type —
//! in-app `title.txt` and `body.txt`, email `subject.txt`, `email.txt` and `email.html` (which
//! extends `layout.html`). Names ending in `.html` escape every value by default; a value the
//! template does not know is an error, not an empty string.
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::domain::CATALOGUE;

/// `(name, source)` of every template.
const SOURCES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    (
        "account.created/title.txt",
        include_str!("../templates/account.created/title.txt"),
    ),
    (
        "account.created/body.txt",
        include_str!("../templates/account.created/body.txt"),
    ),
    (
        "account.created/subject.txt",
        include_str!("../templates/account.created/subject.txt"),
    ),
    (
        "account.created/email.txt",
        include_str!("../templates/account.created/email.txt"),
    ),
    (
        "account.created/email.html",
        include_str!("../templates/account.created/email.html"),
    ),
    (
        "account.login_new_address/title.txt",
        include_str!("../templates/account.login_new_address/title.txt"),
    ),
    (
        "account.login_new_address/body.txt",
        include_str!("../templates/account.login_new_address/body.txt"),
    ),
    (
        "account.login_new_address/subject.txt",
        include_str!("../templates/account.login_new_address/subject.txt"),
    ),
    (
        "account.login_new_address/email.txt",
        include_str!("../templates/account.login_new_address/email.txt"),
    ),
    (
        "account.login_new_address/email.html",
        include_str!("../templates/account.login_new_address/email.html"),
    ),
    (
        "product.out_of_stock/title.txt",
        include_str!("../templates/product.out_of_stock/title.txt"),
    ),
    (
        "product.out_of_stock/body.txt",
        include_str!("../templates/product.out_of_stock/body.txt"),
    ),
    (
        "product.out_of_stock/subject.txt",
        include_str!("../templates/product.out_of_stock/subject.txt"),
    ),
    (
        "product.out_of_stock/email.txt",
        include_str!("../templates/product.out_of_stock/email.txt"),
    ),
    (
        "product.out_of_stock/email.html",
        include_str!("../templates/product.out_of_stock/email.html"),
    ),
    (
        "account.email_verification_requested/subject.txt",
        include_str!("../templates/account.email_verification_requested/subject.txt"),
    ),
    (
        "account.email_verification_requested/email.txt",
        include_str!("../templates/account.email_verification_requested/email.txt"),
    ),
    (
        "account.email_verification_requested/email.html",
        include_str!("../templates/account.email_verification_requested/email.html"),
    ),
    (
        "account.registration_attempted/subject.txt",
        include_str!("../templates/account.registration_attempted/subject.txt"),
    ),
    (
        "account.registration_attempted/email.txt",
        include_str!("../templates/account.registration_attempted/email.txt"),
    ),
    (
        "account.registration_attempted/email.html",
        include_str!("../templates/account.registration_attempted/email.html"),
    ),
    (
        "account.password_reset_requested/subject.txt",
        include_str!("../templates/account.password_reset_requested/subject.txt"),
    ),
    (
        "account.password_reset_requested/email.txt",
        include_str!("../templates/account.password_reset_requested/email.txt"),
    ),
    (
        "account.password_reset_requested/email.html",
        include_str!("../templates/account.password_reset_requested/email.html"),
    ),
    // Bookings: the owner in-app (title, body), the guest by email.
    (
        "booking.confirmed/title.txt",
        include_str!("../templates/booking.confirmed/title.txt"),
    ),
    (
        "booking.confirmed/body.txt",
        include_str!("../templates/booking.confirmed/body.txt"),
    ),
    (
        "booking.confirmed/subject.txt",
        include_str!("../templates/booking.confirmed/subject.txt"),
    ),
    (
        "booking.confirmed/email.txt",
        include_str!("../templates/booking.confirmed/email.txt"),
    ),
    (
        "booking.confirmed/email.html",
        include_str!("../templates/booking.confirmed/email.html"),
    ),
    (
        "booking.cancelled/title.txt",
        include_str!("../templates/booking.cancelled/title.txt"),
    ),
    (
        "booking.cancelled/body.txt",
        include_str!("../templates/booking.cancelled/body.txt"),
    ),
    (
        "booking.cancelled/subject.txt",
        include_str!("../templates/booking.cancelled/subject.txt"),
    ),
    (
        "booking.cancelled/email.txt",
        include_str!("../templates/booking.cancelled/email.txt"),
    ),
    (
        "booking.cancelled/email.html",
        include_str!("../templates/booking.cancelled/email.html"),
    ),
    (
        "booking.reminder/subject.txt",
        include_str!("../templates/booking.reminder/subject.txt"),
    ),
    (
        "booking.reminder/email.txt",
        include_str!("../templates/booking.reminder/email.txt"),
    ),
    (
        "booking.reminder/email.html",
        include_str!("../templates/booking.reminder/email.html"),
    ),
    // Notices about a partner's own webhook endpoint (in-app only).
    (
        "webhook.delivery_failed/title.txt",
        include_str!("../templates/webhook.delivery_failed/title.txt"),
    ),
    (
        "webhook.delivery_failed/body.txt",
        include_str!("../templates/webhook.delivery_failed/body.txt"),
    ),
    (
        "webhook.endpoint_disabled/title.txt",
        include_str!("../templates/webhook.endpoint_disabled/title.txt"),
    ),
    (
        "webhook.endpoint_disabled/body.txt",
        include_str!("../templates/webhook.endpoint_disabled/body.txt"),
    ),
    (
        "order.paid/title.txt",
        include_str!("../templates/order.paid/title.txt"),
    ),
    ("order.paid/body.txt", include_str!("../templates/order.paid/body.txt")),
    (
        "order.paid/subject.txt",
        include_str!("../templates/order.paid/subject.txt"),
    ),
    (
        "order.paid/email.txt",
        include_str!("../templates/order.paid/email.txt"),
    ),
    (
        "order.paid/email.html",
        include_str!("../templates/order.paid/email.html"),
    ),
    (
        "order.failed/title.txt",
        include_str!("../templates/order.failed/title.txt"),
    ),
    (
        "order.failed/body.txt",
        include_str!("../templates/order.failed/body.txt"),
    ),
    (
        "order.failed/subject.txt",
        include_str!("../templates/order.failed/subject.txt"),
    ),
    (
        "order.failed/email.txt",
        include_str!("../templates/order.failed/email.txt"),
    ),
    (
        "order.failed/email.html",
        include_str!("../templates/order.failed/email.html"),
    ),
    (
        "order.expired/title.txt",
        include_str!("../templates/order.expired/title.txt"),
    ),
    (
        "order.expired/body.txt",
        include_str!("../templates/order.expired/body.txt"),
    ),
    (
        "order.expired/subject.txt",
        include_str!("../templates/order.expired/subject.txt"),
    ),
    (
        "order.expired/email.txt",
        include_str!("../templates/order.expired/email.txt"),
    ),
    (
        "order.expired/email.html",
        include_str!("../templates/order.expired/email.html"),
    ),
    (
        "order.refunded/title.txt",
        include_str!("../templates/order.refunded/title.txt"),
    ),
    (
        "order.refunded/body.txt",
        include_str!("../templates/order.refunded/body.txt"),
    ),
    (
        "order.refunded/subject.txt",
        include_str!("../templates/order.refunded/subject.txt"),
    ),
    (
        "order.refunded/email.txt",
        include_str!("../templates/order.refunded/email.txt"),
    ),
    (
        "order.refunded/email.html",
        include_str!("../templates/order.refunded/email.html"),
    ),
    (
        "order.payment_returned/title.txt",
        include_str!("../templates/order.payment_returned/title.txt"),
    ),
    (
        "order.payment_returned/body.txt",
        include_str!("../templates/order.payment_returned/body.txt"),
    ),
    (
        "order.payment_returned/subject.txt",
        include_str!("../templates/order.payment_returned/subject.txt"),
    ),
    (
        "order.payment_returned/email.txt",
        include_str!("../templates/order.payment_returned/email.txt"),
    ),
    (
        "order.payment_returned/email.html",
        include_str!("../templates/order.payment_returned/email.html"),
    ),
];

/// An in-app notification's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InApp {
    pub title: String,
    pub body: String,
}

/// An email's subject and bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
}

/// A template that failed: a bug in the template or in the values given to it.
#[derive(Debug, thiserror::Error)]
#[error("template {name}: {source}")]
pub struct TemplateError {
    name: String,
    source: minijinja::Error,
}

impl Templates {
    /// Compiles every template; fails on a syntax error. `app_url` is where links in messages
    /// point (the web app: `{{ app_url }}/reset-password?token=…`).
    pub fn new(app_url: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_global("app_url", app_url.trim_end_matches('/').to_owned());
        for (name, source) in SOURCES {
            env.add_template(name, source).map_err(|source| TemplateError {
                name: (*name).to_owned(),
                source,
            })?;
        }
        let templates = Self { env };
        // Every type in the catalogue has the templates of its channels.
        for c in CATALOGUE {
            let in_app = if c.in_app || c.owner_in_app {
                &["title.txt", "body.txt"][..]
            } else {
                &[]
            };
            let email = if c.email == crate::domain::EmailPolicy::Never {
                &[][..]
            } else {
                &["subject.txt", "email.txt", "email.html"][..]
            };
            for file in in_app.iter().chain(email) {
                let name = format!("{}/{file}", c.event_type);
                templates
                    .env
                    .get_template(&name)
                    .map_err(|source| TemplateError { name, source })?;
            }
        }
        Ok(templates)
    }

    fn render(&self, name: String, context: &impl Serialize) -> Result<String, TemplateError> {
        self.env
            .get_template(&name)
            .and_then(|t| t.render(context))
            .map_err(|source| TemplateError { name, source })
    }

    /// The in-app notification of `event_type`.
    pub fn in_app(&self, event_type: &str, context: &impl Serialize) -> Result<InApp, TemplateError> {
        Ok(InApp {
            title: one_line(&self.render(format!("{event_type}/title.txt"), context)?, 200),
            body: self
                .render(format!("{event_type}/body.txt"), context)?
                .trim()
                .to_owned(),
        })
    }

    /// The email of `event_type`.
    pub fn email(&self, event_type: &str, context: &impl Serialize) -> Result<Email, TemplateError> {
        Ok(Email {
            subject: one_line(&self.render(format!("{event_type}/subject.txt"), context)?, 400),
            text: self.render(format!("{event_type}/email.txt"), context)?,
            html: self.render(format!("{event_type}/email.html"), context)?,
        })
    }
}

/// A subject or title: one line (a value with a line break cannot add a header), at most `max`
/// characters.
fn one_line(s: &str, max: usize) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_values_and_text_keeps_them() {
        let t = Templates::new("https://app.thali.test").unwrap();
        let context = serde_json::json!({
            "name": "<script>alert(1)</script>",
            "email": "a@example.com",
            "username": "chai",
            "product_id": "p",
            "product_name": "Tea & <b>snacks</b>",
        });
        let email = t.email("product.out_of_stock", &context).unwrap();
        assert!(
            email.html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{}",
            email.html
        );
        assert!(email.html.contains("Tea &amp; &lt;b&gt;snacks&lt;&#x2f;b&gt;"));
        assert!(!email.html.contains("<script>"));
        assert!(email.text.contains("Hello <script>alert(1)</script>,"));
        assert_eq!(email.subject, "Tea & <b>snacks</b> is out of stock");
        let in_app = t.in_app("product.out_of_stock", &context).unwrap();
        assert_eq!(in_app.title, "Tea & <b>snacks</b> is out of stock");
    }

    #[test]
    fn a_line_break_in_a_value_cannot_reach_the_subject() {
        let t = Templates::new("https://app.thali.test").unwrap();
        let context = serde_json::json!({
            "name": "Asha\r\nBcc: everyone@example.com",
            "email": "a@example.com",
            "role": "buyer",
        });
        let email = t.email("account.created", &context).unwrap();
        assert_eq!(email.subject, "Welcome to Thali, Asha Bcc: everyone@example.com");
    }

    #[test]
    fn a_value_the_template_needs_but_lacks_is_an_error() {
        let t = Templates::new("https://app.thali.test").unwrap();
        let err = t
            .email("account.created", &serde_json::json!({ "name": "Asha" }))
            .unwrap_err();
        assert!(err.to_string().contains("account.created/"), "{err}");
    }
}
