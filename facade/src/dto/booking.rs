//! JSON shapes of the booking routes. The booking service validates; the schema states its
//! rules so clients know the contract.
use serde::{Deserialize, Deserializer, Serialize};
use thali_proto::booking::v1 as pb;
use utoipa::{IntoParams, ToSchema};

use super::{integer, rfc3339};

/// A 32-bit integer as JSON Schema counts them (`2.0` is 2).
fn int32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let n = integer(deserializer)?;
    i32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is out of range")))
}

#[derive(Deserialize)]
#[serde(transparent)]
struct Int32(#[serde(deserialize_with = "int32")] i32);

fn optional_int32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i32>, D::Error> {
    Option::<Int32>::deserialize(deserializer).map(|o| o.map(|i| i.0))
}

/// How a restaurant takes bookings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Policy {
    /// Starts are offered on this grid from each opening.
    #[schema(example = 15)]
    pub slot_minutes: i32,
    /// How long one booking holds its table.
    #[schema(example = 90)]
    pub sitting_minutes: i32,
    /// How far ahead guests may book.
    #[schema(example = 60)]
    pub window_days: i32,
    /// How soon a booking may start at the earliest.
    #[schema(example = 30)]
    pub lead_minutes: i32,
    /// Guests may cancel until this long before the start.
    #[schema(example = 120)]
    pub cancel_cutoff_minutes: i32,
    /// The deposit asked per guest, in paise (INR); 0: none. A booking then waits 15 minutes
    /// for its deposit (`pending_payment`), holding its table.
    #[schema(example = 0)]
    pub deposit_per_guest_minor: i64,
}

impl From<pb::Policy> for Policy {
    fn from(p: pb::Policy) -> Self {
        Self {
            slot_minutes: p.slot_minutes,
            sitting_minutes: p.sitting_minutes,
            window_days: p.window_days,
            lead_minutes: p.lead_minutes,
            cancel_cutoff_minutes: p.cancel_cutoff_minutes,
            deposit_per_guest_minor: p.deposit_per_guest_minor,
        }
    }
}

/// Policy fields to set: absent fields keep their value (the default when creating).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChanges {
    /// 5, 10, 15, 20, 30 or 60 (default 15).
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, example = 15)]
    pub slot_minutes: Option<i32>,
    /// 15-480 (default 90).
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 15, maximum = 480)]
    pub sitting_minutes: Option<i32>,
    /// 1-365 (default 60).
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 365)]
    pub window_days: Option<i32>,
    /// 0-10080 (default 30).
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 0, maximum = 10080)]
    pub lead_minutes: Option<i32>,
    /// 0-20160 (default 120).
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 0, maximum = 20160)]
    pub cancel_cutoff_minutes: Option<i32>,
    /// Paise per guest (INR): 0 (none, the default; 0 also removes one) or 100-1000000.
    #[serde(default, deserialize_with = "super::optional_integer")]
    #[schema(value_type = Option<i64>, example = 50000)]
    pub deposit_per_guest_minor: Option<i64>,
}

impl From<PolicyChanges> for pb::PolicyChanges {
    fn from(p: PolicyChanges) -> Self {
        Self {
            slot_minutes: p.slot_minutes,
            sitting_minutes: p.sitting_minutes,
            window_days: p.window_days,
            lead_minutes: p.lead_minutes,
            cancel_cutoff_minutes: p.cancel_cutoff_minutes,
            deposit_per_guest_minor: p.deposit_per_guest_minor,
        }
    }
}

/// One opening range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpeningHours {
    #[schema(
        example = "monday",
        pattern = "^(monday|tuesday|wednesday|thursday|friday|saturday|sunday)$"
    )]
    pub weekday: String,
    /// Local time.
    #[schema(example = "08:00", pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub opens: String,
    /// Local time; at or before `opens` means past midnight.
    #[schema(example = "23:00", pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub closes: String,
}

impl From<pb::OpeningHours> for OpeningHours {
    fn from(h: pb::OpeningHours) -> Self {
        Self {
            weekday: h.weekday,
            opens: h.opens,
            closes: h.closes,
        }
    }
}

/// Body of `PUT /api/v1/restaurants/{id}/hours` and its answer: the whole week.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    /// At most 28 entries; several per weekday allowed, none overlapping.
    #[schema(max_items = 28)]
    pub hours: Vec<OpeningHours>,
}

/// A restaurant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Restaurant {
    pub id: String,
    /// Shown to the owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    pub name: String,
    pub city: String,
    pub cuisines: Vec<String>,
    pub address: String,
    /// IANA zone.
    #[schema(example = "Asia/Kolkata")]
    pub time_zone: String,
    pub policy: Policy,
    /// Absent in search results.
    pub hours: Vec<OpeningHours>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl From<pb::Restaurant> for Restaurant {
    fn from(r: pb::Restaurant) -> Self {
        Self {
            id: r.id,
            owner_id: Some(r.owner_id).filter(|o| !o.is_empty()),
            name: r.name,
            city: r.city,
            cuisines: r.cuisines,
            address: r.address,
            time_zone: r.time_zone,
            policy: r.policy.unwrap_or_default().into(),
            hours: r.hours.into_iter().map(Into::into).collect(),
            created_at: rfc3339(r.create_time),
            updated_at: rfc3339(r.update_time),
        }
    }
}

/// Body of `POST /api/v1/restaurants`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRestaurant {
    #[schema(example = "Chai Point", min_length = 1, max_length = 120)]
    pub name: String,
    #[schema(example = "Bengaluru", min_length = 1, max_length = 80)]
    pub city: String,
    /// At most 10 tags of 1-40 of a-z, 0-9, '-' and space (lowercased).
    #[serde(default)]
    #[schema(example = json!(["south indian", "cafe"]), max_items = 10)]
    pub cuisines: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 300)]
    pub address: String,
    /// IANA zone.
    #[schema(example = "Asia/Kolkata")]
    pub time_zone: String,
    #[serde(default)]
    pub policy: Option<PolicyChanges>,
}

/// Body of `PATCH /api/v1/restaurants/{id}`: absent fields are left unchanged.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRestaurant {
    #[schema(min_length = 1, max_length = 120)]
    pub name: Option<String>,
    #[schema(min_length = 1, max_length = 80)]
    pub city: Option<String>,
    /// Replaces the cuisines when present.
    #[schema(max_items = 10)]
    pub cuisines: Option<Vec<String>>,
    #[schema(max_length = 300)]
    pub address: Option<String>,
    pub time_zone: Option<String>,
    pub policy: Option<PolicyChanges>,
}

/// A table.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Table {
    pub id: String,
    pub restaurant_id: String,
    pub label: String,
    pub min_seats: i32,
    pub max_seats: i32,
    /// Inactive tables keep their bookings and take no new ones.
    pub active: bool,
}

impl From<pb::Table> for Table {
    fn from(t: pb::Table) -> Self {
        Self {
            id: t.id,
            restaurant_id: t.restaurant_id,
            label: t.label,
            min_seats: t.min_seats,
            max_seats: t.max_seats,
            active: t.active,
        }
    }
}

/// A restaurant's tables.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TableList {
    pub tables: Vec<Table>,
}

/// Body of `POST /api/v1/restaurants/{id}/tables`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    /// Unique in the restaurant.
    #[schema(example = "T1", min_length = 1, max_length = 40)]
    pub label: String,
    #[serde(deserialize_with = "int32")]
    #[schema(example = 2, minimum = 1, maximum = 50)]
    pub min_seats: i32,
    #[serde(deserialize_with = "int32")]
    #[schema(example = 4, minimum = 1, maximum = 50)]
    pub max_seats: i32,
}

/// Body of `PATCH /api/v1/tables/{id}`: absent fields are left unchanged.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTable {
    #[schema(min_length = 1, max_length = 40)]
    pub label: Option<String>,
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 50)]
    pub min_seats: Option<i32>,
    #[serde(default, deserialize_with = "optional_int32")]
    #[schema(value_type = Option<i32>, minimum = 1, maximum = 50)]
    pub max_seats: Option<i32>,
    /// false: the table takes no new bookings (its bookings stay).
    pub active: Option<bool>,
}

/// Body of `POST /api/v1/restaurants/{id}/closures`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClosure {
    /// First closed local date.
    #[schema(example = "2026-12-25", format = Date)]
    pub from: String,
    /// Last closed local date (inclusive); at most 366 days after `from`.
    #[schema(example = "2026-12-26", format = Date)]
    pub to: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
}

/// A closure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Closure {
    pub id: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// A bookable start.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Slot {
    /// In the restaurant's zone.
    #[schema(example = "2026-11-25T19:00")]
    pub local: String,
    /// The same instant in UTC.
    pub start_time: Option<String>,
}

impl From<pb::Slot> for Slot {
    fn from(s: pb::Slot) -> Self {
        Self {
            local: s.local,
            start_time: rfc3339(s.start_time),
        }
    }
}

/// Query of `GET /api/v1/restaurants/{id}/availability`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AvailabilityQuery {
    /// Local date.
    #[param(example = "2026-11-25", format = Date)]
    pub date: String,
    #[param(example = 2, minimum = 1, maximum = 50)]
    pub party_size: i32,
}

/// A day's free starts for a party.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Availability {
    pub restaurant_id: String,
    pub date: String,
    pub time_zone: String,
    pub party_size: i32,
    pub slots: Vec<Slot>,
}

/// Query of `GET /api/v1/restaurants` (search).
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    #[param(example = "Bengaluru", min_length = 1, max_length = 80)]
    pub city: String,
    /// One cuisine tag; absent: any.
    #[param(example = "south indian", max_length = 40)]
    pub cuisine: Option<String>,
    #[param(example = 2, minimum = 1, maximum = 50)]
    pub party_size: i32,
    /// Local date.
    #[param(example = "2026-11-25", format = Date)]
    pub date: String,
    /// Local time; starts within an hour either side count. Absent: the whole day.
    #[param(example = "19:30", pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    pub time: Option<String>,
    /// 1-100; 0 or absent means 50.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    /// From the previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// A restaurant that has a table free, and the starts that matched.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchResult {
    pub restaurant: Restaurant,
    pub slots: Vec<Slot>,
}

/// One page of search results, nearest free start first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchPage {
    pub results: Vec<SearchResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A reservation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Booking {
    pub id: String,
    pub restaurant_id: String,
    pub table_id: String,
    pub guest_id: String,
    pub party_size: i32,
    /// In the restaurant's zone.
    #[schema(example = "2026-11-25T19:00")]
    pub start: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    /// confirmed, pending_payment (waiting for its deposit, holding its table) or cancelled.
    pub status: String,
    pub guest_name: String,
    pub phone: String,
    pub note: String,
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Present when the restaurant asks a deposit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deposit: Option<Deposit>,
    /// When the owner marked the guest a no-show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_show_at: Option<String>,
}

/// A booking's deposit: pay it as the order `order_id` (`GET /api/v1/orders/{order_id}` has what
/// Razorpay Checkout needs) before `pay_by`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deposit {
    pub amount: super::Money,
    /// pending, paid, refund_requested, refunded, expired, failed, void or kept.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<String>,
}

impl From<pb::Booking> for Booking {
    fn from(b: pb::Booking) -> Self {
        Self {
            id: b.id,
            restaurant_id: b.restaurant_id,
            table_id: b.table_id,
            guest_id: b.guest_id,
            party_size: b.party_size,
            start: b.local_start,
            start_time: rfc3339(b.start_time),
            end_time: rfc3339(b.end_time),
            status: b.status,
            guest_name: b.guest_name,
            phone: b.phone,
            note: b.note,
            created_at: rfc3339(b.create_time),
            cancelled_at: rfc3339(b.cancel_time),
            cancel_reason: Some(b.cancel_reason).filter(|r| !r.is_empty()),
            deposit: b.deposit.map(|d| Deposit {
                amount: d.amount.unwrap_or_default().into(),
                status: d.status,
                order_id: Some(d.order_id).filter(|o| !o.is_empty()),
                pay_by: rfc3339(d.pay_by),
            }),
            no_show_at: rfc3339(b.no_show_time),
        }
    }
}

/// Body of `POST /api/v1/bookings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBooking {
    #[schema(format = Uuid)]
    pub restaurant_id: String,
    #[serde(deserialize_with = "int32")]
    #[schema(example = 2, minimum = 1, maximum = 50)]
    pub party_size: i32,
    /// Local date-time in the restaurant's zone. A time a DST change skips is refused; a
    /// repeated one takes the earlier offset.
    #[schema(example = "2026-11-25T19:00", pattern = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")]
    pub start: String,
    #[schema(example = "Asha", min_length = 1, max_length = 120)]
    pub guest_name: String,
    #[schema(
        example = "+91 98450 00000",
        min_length = 1,
        max_length = 32,
        pattern = r"^[0-9+() -]+$"
    )]
    pub phone: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

/// Body of `POST /api/v1/bookings/{id}/cancel`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBooking {
    #[serde(default)]
    #[schema(example = "plans changed", max_length = 500)]
    pub reason: String,
}

/// Query of `GET /api/v1/bookings`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListBookingsQuery {
    /// A restaurant you own (admins: any). Absent: your own bookings as a guest.
    #[param(format = Uuid)]
    pub restaurant_id: Option<String>,
    /// Admins only: every booking.
    pub all: Option<bool>,
    /// 1-100; 0 or absent means 50.
    #[param(minimum = 0, maximum = 100)]
    pub page_size: Option<i32>,
    pub page_token: Option<String>,
}

/// One page of bookings, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BookingPage {
    pub bookings: Vec<Booking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}
