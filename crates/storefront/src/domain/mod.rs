//! Storefront rules: usernames, profiles, products, prices. Pure: no I/O, no database, no gRPC.
use chrono::{DateTime, Utc};
use thali_platform::errors::Violation;
use uuid::Uuid;

pub mod media;
mod reservation;
pub use reservation::*;

/// Names a creator page cannot take: they collide with routes, roles or the brand.
pub const RESERVED_USERNAMES: &[&str] = &[
    "about",
    "account",
    "admin",
    "administrator",
    "api",
    "app",
    "assets",
    "auth",
    "billing",
    "blog",
    "cdn",
    "checkout",
    "dashboard",
    "docs",
    "help",
    "login",
    "logout",
    "mail",
    "me",
    "metrics",
    "null",
    "orders",
    "register",
    "root",
    "security",
    "settings",
    "signup",
    "static",
    "status",
    "store",
    "support",
    "system",
    "thali",
    "undefined",
    "www",
];

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 30;
pub const DISPLAY_NAME_MAX: usize = 80;
pub const BIO_MAX: usize = 1000;
pub const TITLE_MAX: usize = 120;
pub const DESCRIPTION_MAX: usize = 5000;
/// Largest price accepted, in minor units: 10 million of a major unit.
pub const PRICE_MAX_MINOR: i64 = 1_000_000_000;
/// Largest stock count accepted.
pub const STOCK_MAX: i64 = 1_000_000_000;
/// Products shown on one storefront page.
pub const STOREFRONT_PRODUCTS_MAX: u64 = 200;
/// Default and largest page of `ListProducts`.
pub const PAGE_SIZE_DEFAULT: u64 = 50;
pub const PAGE_SIZE_MAX: u64 = 100;

/// Everything that can go wrong in a storefront use case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorefrontError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("authentication required")]
    Unauthenticated,
    #[error("only the owner of this creator page may change it")]
    NotOwner,
    #[error("only creator accounts may open a creator page")]
    RoleRequired,
    #[error("the username is taken")]
    UsernameTaken,
    #[error("no creator with this username")]
    CreatorNotFound,
    #[error("no product with this id")]
    ProductNotFound,
    #[error("the product is archived and cannot be changed")]
    ProductArchived,
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("only {available} left of product {product_id}")]
    OutOfStock { product_id: Uuid, available: i64 },
    #[error("product {0} is not on sale")]
    ProductUnavailable(Uuid),
    #[error("the products of one reservation must share one currency")]
    MixedCurrencies,
    #[error("no reservation with this id")]
    ReservationNotFound,
    #[error("the reservation was released (expired or given up); its units are back on sale")]
    ReservationReleased,
    #[error("the reservation is committed (sold); it cannot be released")]
    ReservationCommitted,
    #[error("only Thali services may hold stock")]
    ServiceOnly,
    #[error("{0}")]
    Image(#[from] media::ImageError),
    #[error("the upload is over {0} bytes")]
    UploadTooLarge(usize),
    #[error("media cannot be stored now")]
    MediaUnavailable,
    #[error("the database does not answer")]
    Unavailable,
    #[error("internal: {0}")]
    Internal(String),
}

impl StorefrontError {
    /// One invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }
}

/// A creator page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creator {
    pub id: Uuid,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub owner_subject: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An amount in minor units of an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

/// A product on a creator page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub creator_id: Uuid,
    pub title: String,
    pub description: String,
    pub price: Money,
    pub active: bool,
    pub stock: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// A validated request to create a creator page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewCreator {
    pub username: String,
    pub display_name: String,
    pub bio: String,
}

/// A validated change of profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChanges {
    pub display_name: Option<String>,
    pub bio: Option<String>,
}

/// A validated request to create a product.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewProduct {
    pub title: String,
    pub description: String,
    pub price: Money,
    pub stock: Option<i64>,
    pub active: bool,
}

/// A validated change of a product; `None` leaves a field as it is. `stock: Some(None)` makes
/// the stock unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChanges {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<Money>,
    pub active: Option<bool>,
    pub stock: Option<Option<i64>>,
}

impl ProductChanges {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Whether an account with `roles` may open a creator page: creators (and admins) only.
pub fn may_open_creator_page(roles: &[String]) -> bool {
    roles.iter().any(|r| r == "creator" || r == "admin")
}

/// Checks a username: 3–30 of `a-z 0-9 _ -`, not reserved. Returns why not.
pub fn check_username(username: &str) -> Result<(), String> {
    let len = username.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(format!("must be {USERNAME_MIN} to {USERNAME_MAX} characters long"));
    }
    if !username
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("may contain only lowercase letters a-z, digits 0-9, '_' and '-'".into());
    }
    if RESERVED_USERNAMES.contains(&username) {
        return Err("is reserved".into());
    }
    Ok(())
}

/// Checks a price: above zero, bounded, in a known ISO 4217 currency.
pub fn check_price(field: &str, amount_minor: i64, currency: &str, out: &mut Vec<Violation>) {
    if amount_minor <= 0 {
        out.push(Violation::new(
            format!("{field}.amount_minor"),
            "must be greater than 0",
        ));
    } else if amount_minor > PRICE_MAX_MINOR {
        out.push(Violation::new(
            format!("{field}.amount_minor"),
            format!("must be at most {PRICE_MAX_MINOR}"),
        ));
    }
    if !is_currency(currency) {
        out.push(Violation::new(
            format!("{field}.currency"),
            "must be an ISO 4217 code such as INR",
        ));
    }
}

/// Whether `code` is an ISO 4217 alphabetic code (upper case).
pub fn is_currency(code: &str) -> bool {
    thali_platform::money::is_currency(code)
}

/// Checks a free-text field with `platform::text` (trimmed, NFC, lengths in characters, no
/// control or bidi characters; line breaks only in the bio and descriptions) and returns its
/// stored form.
fn check_text(field: &str, value: &str, min: usize, max: usize, out: &mut Vec<Violation>) -> String {
    use thali_platform::text::Rules;
    let rules = if matches!(field, "bio" | "description") {
        Rules::multiline(min, max)
    } else {
        Rules::line(min, max)
    };
    thali_platform::text::field(field, value, rules, out)
}

fn check_stock(field: &str, stock: i64, out: &mut Vec<Violation>) {
    if !(0..=STOCK_MAX).contains(&stock) {
        out.push(Violation::new(field, format!("must be between 0 and {STOCK_MAX}")));
    }
}

fn done<T>(value: T, violations: Vec<Violation>) -> Result<T, StorefrontError> {
    if violations.is_empty() {
        Ok(value)
    } else {
        Err(StorefrontError::Invalid(violations))
    }
}

impl NewCreator {
    /// Validates every field and reports all problems at once. Display name and bio are trimmed.
    pub fn parse(username: &str, display_name: &str, bio: &str) -> Result<Self, StorefrontError> {
        let mut violations = Vec::new();
        if let Err(why) = check_username(username) {
            violations.push(Violation::new("username", why));
        }
        let display_name = check_text("display_name", display_name, 1, DISPLAY_NAME_MAX, &mut violations);
        let bio = check_text("bio", bio, 0, BIO_MAX, &mut violations);
        done(
            Self {
                username: username.to_owned(),
                display_name,
                bio,
            },
            violations,
        )
    }
}

impl ProfileChanges {
    pub fn parse(display_name: Option<&str>, bio: Option<&str>) -> Result<Self, StorefrontError> {
        let mut violations = Vec::new();
        let display_name = display_name.map(|d| check_text("display_name", d, 1, DISPLAY_NAME_MAX, &mut violations));
        let bio = bio.map(|b| check_text("bio", b, 0, BIO_MAX, &mut violations));
        done(Self { display_name, bio }, violations)
    }
}

impl NewProduct {
    pub fn parse(
        title: &str,
        description: &str,
        price: Option<(i64, &str)>,
        stock: Option<i64>,
        active: Option<bool>,
    ) -> Result<Self, StorefrontError> {
        let mut violations = Vec::new();
        let title = check_text("title", title, 1, TITLE_MAX, &mut violations);
        let description = check_text("description", description, 0, DESCRIPTION_MAX, &mut violations);
        let price = match price {
            Some((amount_minor, currency)) => {
                check_price("price", amount_minor, currency, &mut violations);
                Money {
                    amount_minor,
                    currency: currency.to_owned(),
                }
            }
            None => {
                violations.push(Violation::new("price", "is required"));
                Money {
                    amount_minor: 0,
                    currency: String::new(),
                }
            }
        };
        if let Some(s) = stock {
            check_stock("stock", s, &mut violations);
        }
        done(
            Self {
                title,
                description,
                price,
                stock,
                active: active.unwrap_or(true),
            },
            violations,
        )
    }
}

impl ProductChanges {
    pub fn parse(
        title: Option<&str>,
        description: Option<&str>,
        price: Option<(i64, &str)>,
        active: Option<bool>,
        stock: Option<Option<i64>>,
    ) -> Result<Self, StorefrontError> {
        let mut violations = Vec::new();
        let title = title.map(|t| check_text("title", t, 1, TITLE_MAX, &mut violations));
        let description = description.map(|d| check_text("description", d, 0, DESCRIPTION_MAX, &mut violations));
        let price = price.map(|(amount_minor, currency)| {
            check_price("price", amount_minor, currency, &mut violations);
            Money {
                amount_minor,
                currency: currency.to_owned(),
            }
        });
        if let Some(Some(s)) = stock {
            check_stock("stock", s, &mut violations);
        }
        done(
            Self {
                title,
                description,
                price,
                active,
                stock,
            },
            violations,
        )
    }
}

/// Checks an idempotency key: empty means none (the rule is the platform's).
pub fn parse_idempotency_key(key: &str) -> Result<Option<String>, StorefrontError> {
    thali_platform::idempotency::parse_key(key).map_err(|v| StorefrontError::Invalid(vec![v]))
}

/// A requested page size: 0 means the default.
pub fn page_size(requested: i32) -> Result<u64, StorefrontError> {
    thali_platform::errors::page_size(requested, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        .map_err(|v| StorefrontError::Invalid(vec![v]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: StorefrontError) -> Vec<String> {
        match err {
            StorefrontError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn usernames_follow_the_rules() {
        for ok in ["abc", "tea_stall-42", "a".repeat(30).as_str(), "0xd"] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "Abc",
            "has space",
            "émile",
            "dot.name",
            "a".repeat(31).as_str(),
            "a/b",
        ] {
            assert!(check_username(bad).is_err(), "{bad} should be refused");
        }
        for reserved in ["admin", "api", "www"] {
            assert_eq!(check_username(reserved), Err("is reserved".into()));
        }
    }

    #[test]
    fn new_creator_reports_every_bad_field() {
        let err = NewCreator::parse("A!", "   ", &"x".repeat(1001)).unwrap_err();
        assert_eq!(fields(err), ["username", "display_name", "bio"]);
        let ok = NewCreator::parse("chai_wala", "  Chai Wala ", "").unwrap();
        assert_eq!(ok.display_name, "Chai Wala");
    }

    #[test]
    fn prices_must_be_positive_and_in_a_real_currency() {
        let err = NewProduct::parse("Masala chai", "", Some((0, "INR")), None, None).unwrap_err();
        assert_eq!(fields(err), ["price.amount_minor"]);
        let err = NewProduct::parse("Masala chai", "", Some((-5, "inr")), None, None).unwrap_err();
        assert_eq!(fields(err), ["price.amount_minor", "price.currency"]);
        let err = NewProduct::parse("Masala chai", "", Some((100, "XYZ")), None, None).unwrap_err();
        assert_eq!(fields(err), ["price.currency"]);
        let err = NewProduct::parse("x", "", Some((PRICE_MAX_MINOR + 1, "INR")), None, None).unwrap_err();
        assert_eq!(fields(err), ["price.amount_minor"]);
        let err = NewProduct::parse("x", "", None, None, None).unwrap_err();
        assert_eq!(fields(err), ["price"]);
        let ok = NewProduct::parse("Masala chai", "", Some((4900, "INR")), Some(10), None).unwrap();
        assert_eq!(
            ok.price,
            Money {
                amount_minor: 4900,
                currency: "INR".into()
            }
        );
        assert!(ok.active);
    }

    #[test]
    fn stock_is_unlimited_or_non_negative() {
        assert!(NewProduct::parse("x", "", Some((1, "INR")), Some(-1), None).is_err());
        assert!(NewProduct::parse("x", "", Some((1, "INR")), Some(0), None).is_ok());
        let changes = ProductChanges::parse(None, None, None, None, Some(None)).unwrap();
        assert_eq!(changes.stock, Some(None));
        assert!(ProductChanges::parse(None, None, None, None, Some(Some(-3))).is_err());
    }

    #[test]
    fn idempotency_keys_and_page_sizes_are_bounded() {
        assert_eq!(parse_idempotency_key("").unwrap(), None);
        assert_eq!(parse_idempotency_key("k-1").unwrap(), Some("k-1".into()));
        assert!(parse_idempotency_key("has space").is_err());
        assert!(parse_idempotency_key(&"k".repeat(201)).is_err());
        assert_eq!(page_size(0).unwrap(), PAGE_SIZE_DEFAULT);
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
    }
}
