//! A booking's deposit as payments takes it: who pays whom, how much, and the reference that
//! makes it one order per booking. Pure: no I/O.
use thali_platform::errors::Violation;
use uuid::Uuid;

use super::PaymentsError;

/// Razorpay's smallest INR order, in paise.
pub const MIN_AMOUNT_MINOR: i64 = 100;

/// A deposit asked for a booking, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub booking_id: Uuid,
    pub buyer_subject: String,
    pub seller_subject: String,
    pub restaurant_name: String,
    pub guests: i64,
    pub per_guest_minor: i64,
    pub currency: String,
}

impl Deposit {
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        booking_id: &str,
        buyer_subject: &str,
        seller_subject: &str,
        restaurant_name: &str,
        guests: i64,
        per_guest_minor: i64,
        currency: &str,
    ) -> Result<Self, PaymentsError> {
        let mut violations = Vec::new();
        let booking = Uuid::parse_str(booking_id);
        if booking.is_err() {
            violations.push(Violation::new("booking_id", "a UUID"));
        }
        for (field, value) in [("buyer_subject", buyer_subject), ("seller_subject", seller_subject)] {
            if value.is_empty() || value.len() > 128 {
                violations.push(Violation::new(field, "1 to 128 characters"));
            }
        }
        if !(1..=50).contains(&guests) {
            violations.push(Violation::new("guests", "1 to 50"));
        }
        if per_guest_minor <= 0 || per_guest_minor.checked_mul(guests.max(1)).is_none() {
            violations.push(Violation::new("per_guest.amount_minor", "a positive amount"));
        } else if per_guest_minor * guests.max(1) < MIN_AMOUNT_MINOR {
            violations.push(Violation::new(
                "per_guest.amount_minor",
                format!("the deposit must come to at least {MIN_AMOUNT_MINOR} minor units"),
            ));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            violations.push(Violation::new("per_guest.currency", "an ISO 4217 code such as INR"));
        }
        if !violations.is_empty() {
            return Err(PaymentsError::Invalid(violations));
        }
        Ok(Self {
            booking_id: booking.expect("checked"),
            buyer_subject: buyer_subject.to_owned(),
            seller_subject: seller_subject.to_owned(),
            restaurant_name: restaurant_name.chars().take(30).collect(),
            guests,
            per_guest_minor,
            currency: currency.to_owned(),
        })
    }

    /// The one reference of this booking's deposit order.
    pub fn reference(&self) -> String {
        reference_of(self.booking_id)
    }

    pub fn amount_minor(&self) -> i64 {
        self.per_guest_minor * self.guests
    }
}

/// `booking:{id}`.
pub fn reference_of(booking_id: Uuid) -> String {
    format!("booking:{booking_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deposit_is_checked_and_named_after_its_booking() {
        let id = Uuid::now_v7();
        let d = Deposit::parse(&id.to_string(), "guest", "owner", "Dakshin", 4, 25000, "INR").unwrap();
        assert_eq!(d.amount_minor(), 100_000);
        assert_eq!(d.reference(), format!("booking:{id}"));
        let Err(PaymentsError::Invalid(v)) = Deposit::parse("x", "", "owner", "D", 0, 50, "inr") else {
            panic!("accepted")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "booking_id",
                "buyer_subject",
                "guests",
                "per_guest.amount_minor",
                "per_guest.currency"
            ]
        );
        assert!(
            Deposit::parse(&id.to_string(), "g", "o", "D", 1, 99, "INR").is_err(),
            "below Razorpay's minimum"
        );
        assert!(Deposit::parse(&id.to_string(), "g", "o", "D", 2, i64::MAX, "INR").is_err());
    }
}
