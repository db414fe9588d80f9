//! Stock reservations: units held for an order while it is paid for (issue 10). The rules here
//! are the shape of a request and the arithmetic of its total; that two buyers never hold the
//! last unit is the store's conditional decrement and the database's `stock >= 0` check.
use chrono::{DateTime, TimeDelta, Utc};
use thali_platform::errors::Violation;
use uuid::Uuid;

use super::{Money, StorefrontError, check_username};

/// Lines in one reservation.
pub const RESERVATION_LINES_MAX: usize = 50;
/// Units of one product in one reservation.
pub const RESERVATION_QUANTITY_MAX: i64 = 1000;
/// How long units stay held when the caller does not say.
pub const HOLD_DEFAULT: TimeDelta = TimeDelta::minutes(15);
/// Shortest and longest hold a caller may ask for, in seconds.
pub const HOLD_MIN_SECONDS: i32 = 60;
pub const HOLD_MAX_SECONDS: i32 = 7200;

/// Where a reservation stands: held → committed | released, never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Held,
    Committed,
    Released,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Held, Self::Committed, Self::Released]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A validated `ReserveStock` request. Lines are sorted by product id: every transaction takes
/// product row locks in that one order, so two reservations cannot deadlock on each other.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReservationRequest {
    pub id: Uuid,
    pub username: String,
    pub lines: Vec<(Uuid, i64)>,
    pub hold_seconds: i32,
}

impl ReservationRequest {
    /// Checks every field, naming each one that breaks a rule.
    pub fn parse(id: &str, username: &str, lines: &[(&str, i64)], hold_seconds: i32) -> Result<Self, StorefrontError> {
        let mut violations = Vec::new();
        let id = Uuid::parse_str(id).ok();
        if id.is_none() {
            violations.push(Violation::new("reservation_id", "must be a UUID"));
        }
        if check_username(username).is_err() {
            violations.push(Violation::new("username", "is not a creator's username"));
        }
        if lines.is_empty() || lines.len() > RESERVATION_LINES_MAX {
            violations.push(Violation::new("lines", format!("1 to {RESERVATION_LINES_MAX} lines")));
        }
        let mut parsed = Vec::with_capacity(lines.len());
        for (i, (product, quantity)) in lines.iter().enumerate() {
            match Uuid::parse_str(product) {
                Ok(p) if parsed.iter().any(|(q, _)| *q == p) => violations.push(Violation::new(
                    format!("lines[{i}].product_id"),
                    "each product at most once",
                )),
                Ok(p) => parsed.push((p, *quantity)),
                Err(_) => violations.push(Violation::new(format!("lines[{i}].product_id"), "must be a UUID")),
            }
            if !(1..=RESERVATION_QUANTITY_MAX).contains(quantity) {
                violations.push(Violation::new(
                    format!("lines[{i}].quantity"),
                    format!("1 to {RESERVATION_QUANTITY_MAX}"),
                ));
            }
        }
        let hold_seconds = match hold_seconds {
            0 => i32::try_from(HOLD_DEFAULT.num_seconds()).unwrap_or(900),
            s if (HOLD_MIN_SECONDS..=HOLD_MAX_SECONDS).contains(&s) => s,
            _ => {
                violations.push(Violation::new(
                    "hold_seconds",
                    format!("0 (15 minutes) or {HOLD_MIN_SECONDS} to {HOLD_MAX_SECONDS}"),
                ));
                0
            }
        };
        match id {
            Some(id) if violations.is_empty() => {
                parsed.sort_by_key(|(p, _)| *p);
                Ok(Self {
                    id,
                    username: username.to_owned(),
                    lines: parsed,
                    hold_seconds,
                })
            }
            _ => Err(StorefrontError::Invalid(violations)),
        }
    }

    /// When units held now are released if nobody commits or releases them.
    pub fn expires_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + TimeDelta::seconds(i64::from(self.hold_seconds))
    }
}

/// A line as held: the product's title and price when it was reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLine {
    pub product_id: Uuid,
    pub title: String,
    pub quantity: i64,
    pub unit_price: Money,
}

impl ReservedLine {
    pub fn total_minor(&self) -> i64 {
        self.unit_price.amount_minor.saturating_mul(self.quantity)
    }
}

/// Units held for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: Uuid,
    pub creator_id: Uuid,
    pub username: String,
    pub owner_subject: String,
    pub lines: Vec<ReservedLine>,
    pub total: Money,
    pub state: ReservationState,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The total of priced lines, which must share one currency. Prices (≤ 10^9) times quantities
/// (≤ 1000) over 50 lines stay far inside `i64`; the sum is still checked.
pub fn reservation_total(lines: &[ReservedLine]) -> Result<Money, StorefrontError> {
    let first = lines
        .first()
        .ok_or_else(|| StorefrontError::invalid("lines", "at least one line"))?;
    let currency = first.unit_price.currency.clone();
    let mut total: i64 = 0;
    for line in lines {
        if line.unit_price.currency != currency {
            return Err(StorefrontError::MixedCurrencies);
        }
        total = line
            .unit_price
            .amount_minor
            .checked_mul(line.quantity)
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| StorefrontError::invalid("lines", "the total is too large"))?;
    }
    Ok(Money {
        amount_minor: total,
        currency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "01900000-0000-7000-8000-00000000000a";
    const B: &str = "01900000-0000-7000-8000-00000000000b";
    const R: &str = "01900000-0000-7000-8000-0000000000ff";

    fn fields(err: StorefrontError) -> Vec<String> {
        match err {
            StorefrontError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn line(price: i64, currency: &str, quantity: i64) -> ReservedLine {
        ReservedLine {
            product_id: Uuid::now_v7(),
            title: "chai".into(),
            quantity,
            unit_price: Money {
                amount_minor: price,
                currency: currency.into(),
            },
        }
    }

    #[test]
    fn a_request_is_sorted_by_product_and_holds_fifteen_minutes_by_default() {
        let r = ReservationRequest::parse(R, "chai_point", &[(B, 2), (A, 1)], 0).unwrap();
        assert_eq!(r.lines[0].0.to_string(), A, "product locks are taken in id order");
        assert_eq!(r.hold_seconds, 900);
        let now = Utc::now();
        assert_eq!(r.expires_at(now) - now, TimeDelta::minutes(15));
    }

    #[test]
    fn every_broken_field_is_named() {
        let err = ReservationRequest::parse("nope", "No Such!", &[(A, 0), (A, 2), ("x", 1001)], 30).unwrap_err();
        assert_eq!(
            fields(err),
            vec![
                "reservation_id",
                "username",
                "lines[0].quantity",
                "lines[1].product_id",
                "lines[2].product_id",
                "lines[2].quantity",
                "hold_seconds"
            ]
        );
        assert_eq!(
            fields(ReservationRequest::parse(R, "chai_point", &[], 0).unwrap_err()),
            vec!["lines"]
        );
        let many: Vec<String> = (0..51).map(|_| Uuid::now_v7().to_string()).collect();
        let many: Vec<(&str, i64)> = many.iter().map(|p| (p.as_str(), 1)).collect();
        assert_eq!(
            fields(ReservationRequest::parse(R, "chai_point", &many, 0).unwrap_err()),
            vec!["lines"]
        );
        assert!(ReservationRequest::parse(R, "chai_point", &[(A, 1000)], 7200).is_ok());
        assert!(ReservationRequest::parse(R, "chai_point", &[(A, 1)], 7201).is_err());
    }

    #[test]
    fn a_total_adds_its_lines_in_one_currency_only() {
        let total = reservation_total(&[line(4900, "INR", 2), line(1500, "INR", 3)]).unwrap();
        assert_eq!(
            total,
            Money {
                amount_minor: 14300,
                currency: "INR".into()
            }
        );
        assert!(matches!(
            reservation_total(&[line(4900, "INR", 1), line(100, "USD", 1)]),
            Err(StorefrontError::MixedCurrencies)
        ));
        assert!(reservation_total(&[line(i64::MAX / 2, "INR", 3)]).is_err());
    }
}
