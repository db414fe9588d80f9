//! Booking rules: opening hours (several ranges a day, ranges past midnight), closures, the
//! booking window, slot arithmetic in the restaurant's IANA zone across DST changes, table
//! choice and cancellation. Pure: no I/O, no database, no gRPC. Instants are UTC; local
//! times exist only at the edges (a guest's `YYYY-MM-DDTHH:MM`, a day's list of starts).
use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use thali_platform::errors::Violation;

/// Opening-hour entries one restaurant may have (several per weekday).
pub const HOURS_MAX: usize = 28;

/// How a restaurant takes bookings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Starts are offered on this grid from each opening (default 15 min).
    pub slot: Duration,
    /// How long a table is held by one booking (default 90 min).
    pub sitting: Duration,
    /// How far ahead guests may book (default 60 days).
    pub window: Duration,
    /// How soon a booking may start at the earliest (default 30 min from now).
    pub lead: Duration,
    /// Until how long before the start a guest may cancel (default 2 h).
    pub cancel_cutoff: Duration,
    /// The deposit asked per guest, in paise (INR); 0: none. A booking then waits for its
    /// deposit, holding its table, for [`DEPOSIT_HOLD`].
    pub deposit_per_guest_minor: i64,
}

/// The currency of deposits (restaurants on Thali are in India).
pub const DEPOSIT_CURRENCY: &str = "INR";

/// How long a booking waits for its deposit, holding its table.
pub const DEPOSIT_HOLD: Duration = Duration::minutes(15);

/// Past its hold, how long booking waits for payments' word (order expired, or paid just in
/// time) before it releases the table itself: payments expires an unpaid order within a few
/// minutes of its 15 (the reconciler runs every 2).
pub const DEPOSIT_GRACE: Duration = Duration::minutes(15);

/// A per-guest deposit: 0 (none) or ₹1 to ₹10,000, in paise.
pub fn deposit_ok(minor: i64) -> bool {
    minor == 0 || (100..=1_000_000).contains(&minor)
}

/// Whether the owner may mark a booking a no-show: a confirmed booking whose start has passed.
pub fn may_mark_no_show(status: &str, start: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    status == "confirmed" && now >= start
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            slot: Duration::minutes(15),
            sitting: Duration::minutes(90),
            window: Duration::days(60),
            lead: Duration::minutes(30),
            cancel_cutoff: Duration::hours(2),
            deposit_per_guest_minor: 0,
        }
    }
}

/// One opening range: on `weekday`, from `opens` to `closes` local time; `closes` at or before
/// `opens` means the range ends the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursRange {
    pub weekday: Weekday,
    pub opens: NaiveTime,
    pub closes: NaiveTime,
}

impl HoursRange {
    fn length(&self) -> Duration {
        let d = self.closes - self.opens;
        if d <= Duration::zero() {
            d + Duration::days(1)
        } else {
            d
        }
    }
}

/// Days the restaurant is closed, `from` to `to` inclusive (local dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closure {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// When a restaurant is open and how it books.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub tz: Tz,
    pub hours: Vec<HoursRange>,
    pub closures: Vec<Closure>,
    pub policy: Policy,
}

/// Why a start cannot be booked (stable reasons for the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartRefused {
    /// The sitting does not fit inside one opening range, or the day is closed.
    #[error("the restaurant is not open for a whole sitting at that time")]
    OutsideHours,
    /// Not on the slot grid of its opening range.
    #[error("bookings start on the restaurant's slot grid")]
    NotASlot,
    #[error("that start is too soon")]
    TooSoon,
    #[error("that start is beyond the booking window")]
    TooFar,
}

/// A local date-time a guest gave that names no single instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LocalTimeError {
    #[error("expected YYYY-MM-DDTHH:MM")]
    Malformed,
    /// Skipped by a DST change (e.g. 02:30 on the night clocks go forward).
    #[error("that time does not exist in the restaurant's time zone (a daylight-saving change)")]
    DoesNotExist,
}

/// Parses an IANA zone name (`Asia/Kolkata`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not an IANA time zone"))
}

/// `YYYY-MM-DDTHH:MM` in `tz` as an instant. A time skipped by a DST change is refused; a time
/// that happens twice takes the earlier (the first occurrence).
pub fn local_start(tz: Tz, text: &str) -> Result<DateTime<Utc>, LocalTimeError> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").map_err(|_| LocalTimeError::Malformed)?;
    at_local(tz, naive).ok_or(LocalTimeError::DoesNotExist)
}

fn at_local(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, later) => Some(earlier.min(later).with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

/// The first instant at or after a local time that a DST gap skipped (the gap's end).
fn at_or_after_local(tz: Tz, naive: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = naive;
    for _ in 0..(4 * 60) {
        if let Some(t) = at_local(tz, probe) {
            return t;
        }
        probe += Duration::minutes(1);
    }
    // No zone has a gap of four hours.
    Utc.from_utc_datetime(&naive)
}

/// Parses `HH:MM`.
pub fn parse_time(text: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(text, "%H:%M").ok()
}

/// Parses a weekday name (`monday` … `sunday`).
pub fn parse_weekday(text: &str) -> Option<Weekday> {
    match text {
        "monday" => Some(Weekday::Mon),
        "tuesday" => Some(Weekday::Tue),
        "wednesday" => Some(Weekday::Wed),
        "thursday" => Some(Weekday::Thu),
        "friday" => Some(Weekday::Fri),
        "saturday" => Some(Weekday::Sat),
        "sunday" => Some(Weekday::Sun),
        _ => None,
    }
}

/// Checks a week of opening hours: `(weekday, opens, closes)` entries, several per day allowed,
/// no two overlapping (an overnight range overlaps the next day's early ranges too).
pub fn parse_hours(entries: &[(&str, &str, &str)]) -> Result<Vec<HoursRange>, Vec<Violation>> {
    let mut violations = Vec::new();
    if entries.len() > HOURS_MAX {
        violations.push(Violation::new("hours", format!("at most {HOURS_MAX} entries")));
    }
    let mut ranges = Vec::new();
    for (i, (weekday, opens, closes)) in entries.iter().enumerate() {
        let field = |name: &str| format!("hours[{i}].{name}");
        let day = parse_weekday(weekday);
        let (o, c) = (parse_time(opens), parse_time(closes));
        if day.is_none() {
            violations.push(Violation::new(field("weekday"), "must be monday … sunday"));
        }
        if o.is_none() {
            violations.push(Violation::new(field("opens"), "must be HH:MM"));
        }
        if c.is_none() {
            violations.push(Violation::new(field("closes"), "must be HH:MM"));
        }
        if let (Some(weekday), Some(opens), Some(closes)) = (day, o, c) {
            if opens == closes {
                violations.push(Violation::new(field("closes"), "must differ from opens"));
            } else {
                ranges.push((i, HoursRange { weekday, opens, closes }));
            }
        }
    }
    // Overlaps, on a week of minutes (an overnight Sunday range wraps to Monday).
    const WEEK: i64 = 7 * 24 * 60;
    let span = |r: &HoursRange| {
        let start = i64::from(r.weekday.num_days_from_monday()) * 24 * 60
            + r.opens.signed_duration_since(NaiveTime::MIN).num_minutes();
        (start, start + r.length().num_minutes())
    };
    for (a_index, (i, a)) in ranges.iter().enumerate() {
        for (j, b) in ranges.iter().skip(a_index + 1) {
            let (a0, a1) = span(a);
            let (b0, b1) = span(b);
            let overlaps = [0, WEEK, -WEEK].iter().any(|shift| a0 < b1 + shift && b0 + shift < a1);
            if overlaps {
                violations.push(Violation::new(format!("hours[{j}]"), format!("overlaps hours[{i}]")));
            }
        }
    }
    if violations.is_empty() {
        Ok(ranges.into_iter().map(|(_, r)| r).collect())
    } else {
        Err(violations)
    }
}

/// One occurrence of an opening range: the local date it opens on and its instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opening {
    date: NaiveDate,
    opens: DateTime<Utc>,
    closes: DateTime<Utc>,
}

impl Schedule {
    fn closed_on(&self, date: NaiveDate) -> bool {
        self.closures.iter().any(|c| c.from <= date && date <= c.to)
    }

    /// The openings whose range starts on local `date` (closures removed).
    fn openings_on(&self, date: NaiveDate) -> Vec<Opening> {
        if self.closed_on(date) {
            return Vec::new();
        }
        let mut out: Vec<Opening> = self
            .hours
            .iter()
            .filter(|r| r.weekday == date.weekday())
            .map(|r| {
                let opens = at_or_after_local(self.tz, date.and_time(r.opens));
                let close_date = if r.closes <= r.opens {
                    date.succ_opt().unwrap_or(date)
                } else {
                    date
                };
                let closes = at_or_after_local(self.tz, close_date.and_time(r.closes));
                Opening { date, opens, closes }
            })
            .collect();
        out.sort_by_key(|o| o.opens);
        out
    }

    /// The opening a sitting from `start` fits in whole, if any.
    fn opening_for(&self, start: DateTime<Utc>) -> Option<Opening> {
        let local = start.with_timezone(&self.tz).date_naive();
        let end = start + self.policy.sitting;
        [local.pred_opt(), Some(local)]
            .into_iter()
            .flatten()
            .flat_map(|d| self.openings_on(d))
            .find(|o| o.opens <= start && end <= o.closes)
    }

    /// Whether `start` may be booked at `now`: within the window, the sitting inside one opening
    /// range of a day that is not closed, on that range's slot grid.
    pub fn check_start(&self, start: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), StartRefused> {
        if start < now + self.policy.lead {
            return Err(StartRefused::TooSoon);
        }
        if start > now + self.policy.window {
            return Err(StartRefused::TooFar);
        }
        let opening = self.opening_for(start).ok_or(StartRefused::OutsideHours)?;
        let offset = (start - opening.opens).num_seconds();
        if offset % self.policy.slot.num_seconds() != 0 {
            return Err(StartRefused::NotASlot);
        }
        Ok(())
    }

    /// The starts of local `date` that may be booked at `now`, in order: from each opening, every
    /// slot whose whole sitting fits before the range closes. Stepping is in real time, so a day
    /// with a DST change has its true number of starts.
    pub fn starts_on(&self, date: NaiveDate, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut starts = self.grid_on(date);
        starts.retain(|t| self.check_start(*t, now).is_ok());
        starts
    }

    /// Every start of local `date`'s openings whose whole sitting fits, whatever the clock says.
    pub fn grid_on(&self, date: NaiveDate) -> Vec<DateTime<Utc>> {
        let mut starts = Vec::new();
        for opening in self.openings_on(date) {
            let mut t = opening.opens;
            while t + self.policy.sitting <= opening.closes {
                starts.push(t);
                t += self.policy.slot;
            }
        }
        starts.sort();
        starts.dedup();
        starts
    }
}

/// The grid cells (epoch-aligned, `slot` long) a sitting from `start` to `end` covers: the rows a
/// holding booking writes on SQLite, where a unique (table, cell) index refuses overlaps.
pub fn cells(start: DateTime<Utc>, end: DateTime<Utc>, slot: Duration) -> Vec<i64> {
    let step = slot.num_seconds().max(60);
    let first = start.timestamp().div_euclid(step);
    let last = (end.timestamp() - 1).div_euclid(step);
    (first..=last).collect()
}

/// A table as booking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFit {
    pub id: uuid::Uuid,
    pub min_seats: i32,
    pub max_seats: i32,
    pub active: bool,
}

/// The tables a party of `party` may take, best first: the smallest that fits (fewest spare
/// seats), then the lowest minimum, then by id.
pub fn fitting_tables(tables: &[TableFit], party: i32) -> Vec<TableFit> {
    let mut fit: Vec<TableFit> = tables
        .iter()
        .copied()
        .filter(|t| t.active && t.min_seats <= party && party <= t.max_seats)
        .collect();
    fit.sort_by_key(|t| (t.max_seats, t.min_seats, t.id));
    fit
}

/// Whether a booking starting at `start` may still be cancelled at `now`: the owner any time
/// before it ends, the guest until the cutoff.
pub fn may_cancel(policy: &Policy, start: DateTime<Utc>, now: DateTime<Utc>, by_owner: bool) -> bool {
    if by_owner {
        now < start + policy.sitting
    } else {
        now <= start - policy.cancel_cutoff
    }
}

/// Everything that can go wrong in a booking use case (stable reasons for the API).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BookingError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("no restaurant with this id")]
    RestaurantNotFound,
    #[error("no booking with this id")]
    BookingNotFound,
    #[error("no table with this id")]
    TableNotFound,
    #[error("this restaurant already has a table with that label")]
    LabelTaken,
    /// The table holds bookings that have not ended: deactivate it instead.
    #[error("the table has bookings to come: deactivate it instead")]
    TableHasBookings,
    #[error("only the restaurant's owner may do this")]
    NotOwner,
    #[error("only an account with the restaurant_owner role may open a restaurant")]
    RoleRequired,
    #[error("sign in first")]
    Unauthenticated,
    /// Every table that fits is taken at that time.
    #[error("no table that fits is free at that time")]
    SlotTaken,
    #[error("{0}")]
    Start(StartRefused),
    #[error("no table of this restaurant seats a party of that size")]
    PartyTooLarge,
    #[error("too late to cancel: ask the restaurant")]
    TooLateToCancel,
    #[error("only a confirmed booking whose start has passed can be marked a no-show")]
    NoShowRefused,
    #[error("the guest was marked a no-show: the booking can no longer be cancelled")]
    MarkedNoShow,
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

/// A reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub id: uuid::Uuid,
    pub restaurant_id: uuid::Uuid,
    pub table_id: uuid::Uuid,
    pub guest_id: uuid::Uuid,
    pub party_size: i32,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// `confirmed`, `pending_payment` or `cancelled`.
    pub status: String,
    pub guest_name: String,
    pub phone: String,
    pub note: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub cancel_reason: Option<String>,
    /// The deposit, when the restaurant asked one.
    pub deposit: Option<Deposit>,
    /// When the owner marked the guest a no-show.
    pub no_show_at: Option<DateTime<Utc>>,
}

/// What payments said of a deposit's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositOutcome {
    Paid,
    Expired,
    Failed,
    /// Money went back; `full` when all of it.
    Refunded {
        full: bool,
    },
}

impl DepositOutcome {
    /// The event type it came as.
    pub fn event_type(self) -> &'static str {
        match self {
            DepositOutcome::Paid => "order.paid",
            DepositOutcome::Expired => "order.expired",
            DepositOutcome::Failed => "order.failed",
            DepositOutcome::Refunded { .. } => "order.refunded",
        }
    }
}

/// A booking's deposit and where its money stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub amount_minor: i64,
    /// `pending` (awaiting payment), `paid`, `refund_requested`, `refunded`, `expired` (not paid
    /// in time), `failed`, `void` (cancelled before payment) or `kept` (no-show).
    pub status: String,
    /// The payments order that takes it (once asked).
    pub order_id: Option<uuid::Uuid>,
    /// Until when the table is held for the payment.
    pub pay_by: Option<DateTime<Utc>>,
}

/// Whose bookings a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingsOf {
    /// The caller's own, as a guest.
    Guest(uuid::Uuid),
    /// One restaurant's (its owner, or an admin).
    Restaurant(uuid::Uuid),
    /// Every booking (admins).
    All,
}

/// A booking request, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewBooking {
    pub restaurant_id: uuid::Uuid,
    pub party_size: i32,
    pub starts_at: DateTime<Utc>,
    pub guest_name: String,
    pub phone: String,
    pub note: String,
}

/// The role that may open restaurants (admins may too).
pub const OWNER_ROLE: &str = "restaurant_owner";

/// Whether an account with `roles` may create restaurants.
pub fn may_own_restaurants(roles: &[String]) -> bool {
    roles.iter().any(|r| r == OWNER_ROLE || r == "admin")
}

/// Whether an account with `roles` sees every restaurant's bookings.
pub fn is_admin(roles: &[String]) -> bool {
    roles.iter().any(|r| r == "admin")
}

/// Field limits (the API documents them).
pub const NAME_MAX: usize = 120;
pub const CITY_MAX: usize = 80;
pub const ADDRESS_MAX: usize = 300;
pub const CUISINES_MAX: usize = 10;
pub const CUISINE_MAX: usize = 40;
pub const LABEL_MAX: usize = 40;
pub const SEATS_MAX: i32 = 50;
pub const GUEST_NAME_MAX: usize = 120;
pub const PHONE_MAX: usize = 32;
pub const NOTE_MAX: usize = 500;
pub const REASON_MAX: usize = 500;
pub const PAGE_SIZE_DEFAULT: u64 = 50;
pub const PAGE_SIZE_MAX: u64 = 100;
/// Slot lengths a restaurant may choose, in minutes.
pub const SLOT_CHOICES: [i64; 6] = [5, 10, 15, 20, 30, 60];
/// Closure ranges longer than this are refused (a restaurant closing for good is deleted).
pub const CLOSURE_DAYS_MAX: i64 = 366;

impl BookingError {
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        BookingError::Invalid(vec![Violation::new(field, why)])
    }
}

/// Checks a free-text field (`platform::text`: trimmed, NFC, length within `1..=max`, or
/// `0..=max` when optional, no control or bidi characters; line breaks only in the notes and
/// addresses) and returns its stored form.
fn text(field: &str, value: &str, max: usize, required: bool, out: &mut Vec<Violation>) -> String {
    use thali_platform::text::Rules;
    let min = usize::from(required);
    let rules = if matches!(field, "address" | "note" | "reason") {
        Rules::multiline(min, max)
    } else {
        Rules::line(min, max)
    };
    thali_platform::text::field(field, value, rules, out)
}

/// Lowercase cuisine tags: 1–40 of `a-z 0-9 - space`, at most 10, no repeats.
pub fn parse_cuisines(field: &str, raw: &[String], out: &mut Vec<Violation>) -> Vec<String> {
    if raw.len() > CUISINES_MAX {
        out.push(Violation::new(field, format!("at most {CUISINES_MAX} cuisines")));
    }
    let mut tags: Vec<String> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let tag = c.trim().to_lowercase();
        if tag.is_empty()
            || tag.len() > CUISINE_MAX
            || !tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b' ')
        {
            out.push(Violation::new(
                format!("{field}[{i}]"),
                format!("1 to {CUISINE_MAX} of a-z, 0-9, '-' and space"),
            ));
        } else if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// A search's city, as compared: trimmed, lowercase.
pub fn city_key(city: &str) -> String {
    city.trim().to_lowercase()
}

/// A restaurant's booking rules in minutes, as the API takes them (absent: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyMinutes {
    pub slot: Option<i64>,
    pub sitting: Option<i64>,
    pub window_days: Option<i64>,
    pub lead: Option<i64>,
    pub cancel_cutoff: Option<i64>,
    /// Paise per guest; 0 removes the deposit.
    pub deposit_per_guest: Option<i64>,
}

impl PolicyMinutes {
    /// Applies the given fields to `base`, checking each.
    pub fn apply(&self, base: Policy, out: &mut Vec<Violation>) -> Policy {
        let mut p = base;
        if let Some(slot) = self.slot {
            if SLOT_CHOICES.contains(&slot) {
                p.slot = Duration::minutes(slot);
            } else {
                out.push(Violation::new("slot_minutes", "must be 5, 10, 15, 20, 30 or 60"));
            }
        }
        let mut bounded =
            |field: &str, value: Option<i64>, lo: i64, hi: i64, set: &mut Duration, unit: fn(i64) -> Duration| {
                if let Some(v) = value {
                    if (lo..=hi).contains(&v) {
                        *set = unit(v);
                    } else {
                        out.push(Violation::new(field, format!("must be between {lo} and {hi}")));
                    }
                }
            };
        bounded(
            "sitting_minutes",
            self.sitting,
            15,
            480,
            &mut p.sitting,
            Duration::minutes,
        );
        bounded("window_days", self.window_days, 1, 365, &mut p.window, Duration::days);
        bounded(
            "lead_minutes",
            self.lead,
            0,
            7 * 24 * 60,
            &mut p.lead,
            Duration::minutes,
        );
        bounded(
            "cancel_cutoff_minutes",
            self.cancel_cutoff,
            0,
            14 * 24 * 60,
            &mut p.cancel_cutoff,
            Duration::minutes,
        );
        if let Some(deposit) = self.deposit_per_guest {
            if deposit_ok(deposit) {
                p.deposit_per_guest_minor = deposit;
            } else {
                out.push(Violation::new(
                    "deposit_per_guest_minor",
                    "0 (no deposit) or between 100 and 1000000 paise",
                ));
            }
        }
        p
    }
}

/// A restaurant, as the service shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restaurant {
    pub id: uuid::Uuid,
    pub owner_id: uuid::Uuid,
    pub name: String,
    pub city: String,
    pub cuisines: Vec<String>,
    pub address: String,
    pub time_zone: String,
    pub policy: Policy,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new restaurant, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewRestaurant {
    pub name: String,
    pub city: String,
    pub cuisines: Vec<String>,
    pub address: String,
    pub time_zone: String,
    #[serde(skip)]
    pub policy: Policy,
    /// The policy as minutes, for the idempotency fingerprint.
    pub policy_minutes: [i64; 5],
}

fn minutes_of(p: &Policy) -> [i64; 5] {
    [
        p.slot.num_minutes(),
        p.sitting.num_minutes(),
        p.window.num_days(),
        p.lead.num_minutes(),
        p.cancel_cutoff.num_minutes(),
    ]
}

impl NewRestaurant {
    pub fn parse(
        name: &str,
        city: &str,
        cuisines: &[String],
        address: &str,
        time_zone: &str,
        policy: PolicyMinutes,
    ) -> Result<Self, BookingError> {
        let mut v = Vec::new();
        let name = text("name", name, NAME_MAX, true, &mut v);
        let city = text("city", city, CITY_MAX, true, &mut v);
        let address = text("address", address, ADDRESS_MAX, false, &mut v);
        let cuisines = parse_cuisines("cuisines", cuisines, &mut v);
        if let Err(why) = parse_zone(time_zone) {
            v.push(Violation::new("time_zone", why));
        }
        let policy = policy.apply(Policy::default(), &mut v);
        if !v.is_empty() {
            return Err(BookingError::Invalid(v));
        }
        Ok(Self {
            name,
            city,
            cuisines,
            address,
            time_zone: time_zone.to_owned(),
            policy_minutes: minutes_of(&policy),
            policy,
        })
    }
}

/// Changes to a restaurant; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestaurantChanges {
    pub name: Option<String>,
    pub city: Option<String>,
    pub cuisines: Option<Vec<String>>,
    pub address: Option<String>,
    pub time_zone: Option<String>,
    pub policy: PolicyMinutes,
}

impl RestaurantChanges {
    pub fn parse(
        name: Option<&str>,
        city: Option<&str>,
        cuisines: Option<&[String]>,
        address: Option<&str>,
        time_zone: Option<&str>,
        policy: PolicyMinutes,
    ) -> Result<Self, BookingError> {
        let mut v = Vec::new();
        let out = Self {
            name: name.map(|n| text("name", n, NAME_MAX, true, &mut v)),
            city: city.map(|c| text("city", c, CITY_MAX, true, &mut v)),
            cuisines: cuisines.map(|c| parse_cuisines("cuisines", c, &mut v)),
            address: address.map(|a| text("address", a, ADDRESS_MAX, false, &mut v)),
            time_zone: time_zone.map(|z| {
                if let Err(why) = parse_zone(z) {
                    v.push(Violation::new("time_zone", why));
                }
                z.to_owned()
            }),
            policy,
        };
        // Policy fields are checked against the stored policy when applied; check ranges now.
        policy.apply(Policy::default(), &mut v);
        if v.is_empty() {
            Ok(out)
        } else {
            Err(BookingError::Invalid(v))
        }
    }
}

/// A table, as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub id: uuid::Uuid,
    pub restaurant_id: uuid::Uuid,
    pub label: String,
    pub min_seats: i32,
    pub max_seats: i32,
    pub active: bool,
}

fn check_seats(min: i32, max: i32, v: &mut Vec<Violation>) {
    if !(1..=SEATS_MAX).contains(&min) {
        v.push(Violation::new(
            "min_seats",
            format!("must be between 1 and {SEATS_MAX}"),
        ));
    }
    if !(1..=SEATS_MAX).contains(&max) {
        v.push(Violation::new(
            "max_seats",
            format!("must be between 1 and {SEATS_MAX}"),
        ));
    } else if max < min {
        v.push(Violation::new("max_seats", "must be at least min_seats"));
    }
}

/// A new table, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NewTable {
    pub label: String,
    pub min_seats: i32,
    pub max_seats: i32,
}

impl NewTable {
    pub fn parse(label: &str, min_seats: i32, max_seats: i32) -> Result<Self, BookingError> {
        let mut v = Vec::new();
        let label = text("label", label, LABEL_MAX, true, &mut v);
        check_seats(min_seats, max_seats, &mut v);
        if v.is_empty() {
            Ok(Self {
                label,
                min_seats,
                max_seats,
            })
        } else {
            Err(BookingError::Invalid(v))
        }
    }
}

/// Changes to a table; absent fields stay. The seat range is checked whole once applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    pub label: Option<String>,
    pub min_seats: Option<i32>,
    pub max_seats: Option<i32>,
    pub active: Option<bool>,
}

impl TableChanges {
    pub fn parse(
        label: Option<&str>,
        min_seats: Option<i32>,
        max_seats: Option<i32>,
        active: Option<bool>,
    ) -> Result<Self, BookingError> {
        let mut v = Vec::new();
        let label = label.map(|l| text("label", l, LABEL_MAX, true, &mut v));
        check_seats(min_seats.unwrap_or(1), max_seats.unwrap_or(SEATS_MAX), &mut v);
        if v.is_empty() {
            Ok(Self {
                label,
                min_seats,
                max_seats,
                active,
            })
        } else {
            Err(BookingError::Invalid(v))
        }
    }

    /// The seat range after the change, checked.
    pub fn seats(&self, min: i32, max: i32) -> Result<(i32, i32), BookingError> {
        let (min, max) = (self.min_seats.unwrap_or(min), self.max_seats.unwrap_or(max));
        let mut v = Vec::new();
        check_seats(min, max, &mut v);
        if v.is_empty() {
            Ok((min, max))
        } else {
            Err(BookingError::Invalid(v))
        }
    }
}

/// A closure request, checked: `from` to `to` inclusive, local dates.
pub fn parse_closure(from: &str, to: &str, reason: &str) -> Result<(Closure, String), BookingError> {
    let mut v = Vec::new();
    let date = |field: &str, s: &str, v: &mut Vec<Violation>| {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
        if d.is_none() {
            v.push(Violation::new(field, "must be YYYY-MM-DD"));
        }
        d
    };
    let (f, t) = (date("from", from, &mut v), date("to", to, &mut v));
    let reason = text("reason", reason, REASON_MAX, false, &mut v);
    if let (Some(f), Some(t)) = (f, t) {
        if t < f {
            v.push(Violation::new("to", "must not be before from"));
        } else if (t - f).num_days() >= CLOSURE_DAYS_MAX {
            v.push(Violation::new(
                "to",
                format!("a closure is at most {CLOSURE_DAYS_MAX} days"),
            ));
        }
        if v.is_empty() {
            return Ok((Closure { from: f, to: t }, reason));
        }
    }
    Err(BookingError::Invalid(v))
}

/// A booking request's guest fields and party, checked (the start is checked against the
/// restaurant's zone by the caller).
pub fn check_guest(
    party_size: i32,
    guest_name: &str,
    phone: &str,
    note: &str,
) -> Result<(String, String, String), BookingError> {
    let mut v = Vec::new();
    if !(1..=SEATS_MAX).contains(&party_size) {
        v.push(Violation::new(
            "party_size",
            format!("must be between 1 and {SEATS_MAX}"),
        ));
    }
    let name = text("guest_name", guest_name, GUEST_NAME_MAX, true, &mut v);
    let phone = text("phone", phone, PHONE_MAX, true, &mut v);
    if !phone.is_empty()
        && !phone
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'+' || b == b' ' || b == b'-' || b == b'(' || b == b')')
    {
        v.push(Violation::new("phone", "digits, spaces and + - ( ) only"));
    }
    let note = text("note", note, NOTE_MAX, false, &mut v);
    if v.is_empty() {
        Ok((name, phone, note))
    } else {
        Err(BookingError::Invalid(v))
    }
}

/// Parses an idempotency key: empty is none (the rule is the platform's).
pub fn parse_idempotency_key(key: &str) -> Result<Option<String>, BookingError> {
    thali_platform::idempotency::parse_key(key).map_err(|v| BookingError::Invalid(vec![v]))
}

/// A requested page size: 0 means the default.
pub fn page_size(requested: i32) -> Result<u64, BookingError> {
    thali_platform::errors::page_size(requested, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        .map_err(|v| BookingError::Invalid(vec![v]))
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(field: &str, text: &str) -> Result<NaiveDate, BookingError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| BookingError::invalid(field, "must be YYYY-MM-DD"))
}

/// A table held from `starts_at` to `ends_at` by a confirmed or unpaid booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub table_id: uuid::Uuid,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// The party sizes (1..=[`SEATS_MAX`]) a table of `min..=max` seats takes, as bits `1 << size`.
pub fn party_bits(min: i32, max: i32) -> u64 {
    let lo = min.clamp(1, 63) as u32;
    let hi = max.clamp(0, 62) as u32;
    if hi < lo {
        return 0;
    }
    let up_to_hi = (1u64 << (hi + 1)) - 1;
    let below_lo = (1u64 << lo) - 1;
    up_to_hi & !below_lo
}

/// A restaurant's day as availability and search read it: every start on the slot grid of the
/// openings of that local date at which some table is free for a whole sitting, with the party
/// sizes those free tables take. Independent of the clock (lead time and the window are applied
/// when read), so it can be cached until something changes. Two flat lists of numbers: a city of
/// days encodes, decodes and copies without an allocation per start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Day {
    /// Seconds since the epoch, ascending.
    pub starts: Vec<i64>,
    /// For each start, bit `1 << size` set when a free table takes a party of that size.
    pub parties: Vec<u64>,
    pub lead_s: i64,
    pub window_s: i64,
}

impl Day {
    /// Builds the day: for each grid start, the active tables with no hold overlapping the sitting.
    pub fn build(schedule: &Schedule, tables: &[TableFit], holds: &[Hold], date: NaiveDate) -> Self {
        let sitting = schedule.policy.sitting;
        let (mut starts, mut parties) = (Vec::new(), Vec::new());
        for start in schedule.grid_on(date) {
            let end = start + sitting;
            let free = tables
                .iter()
                .filter(|t| t.active)
                .filter(|t| {
                    !holds
                        .iter()
                        .any(|h| h.table_id == t.id && h.starts_at < end && start < h.ends_at)
                })
                .fold(0u64, |bits, t| bits | party_bits(t.min_seats, t.max_seats));
            if free != 0 {
                starts.push(start.timestamp());
                parties.push(free);
            }
        }
        Self {
            starts,
            parties,
            lead_s: schedule.policy.lead.num_seconds(),
            window_s: schedule.policy.window.num_seconds(),
        }
    }

    /// Whether no start of the day has a free table.
    pub fn is_full(&self) -> bool {
        self.starts.is_empty()
    }

    /// The starts a party of `party` may book at `now`.
    pub fn starts_for(&self, party: i32, now: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let earliest = now.timestamp() + self.lead_s;
        let latest = now.timestamp() + self.window_s;
        let bit = if (1..=SEATS_MAX).contains(&party) {
            1u64 << party
        } else {
            0
        };
        self.starts
            .iter()
            .zip(&self.parties)
            .filter(move |(start, parties)| earliest <= **start && **start <= latest && **parties & bit != 0)
            .filter_map(|(start, _)| DateTime::from_timestamp(*start, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn schedule(tz: &str, hours: &[(&str, &str, &str)]) -> Schedule {
        Schedule {
            tz: parse_zone(tz).unwrap(),
            hours: parse_hours(hours).unwrap(),
            closures: Vec::new(),
            policy: Policy::default(),
        }
    }

    /// Ten days before `date`: inside the 60-day window, past the lead time.
    fn days_before(date: &str) -> DateTime<Utc> {
        d(date).and_hms_opt(0, 0, 0).unwrap().and_utc() - Duration::days(10)
    }

    #[test]
    fn several_ranges_a_day_and_a_range_past_midnight() {
        // Kolkata has no DST: +05:30 all year.
        let s = schedule(
            "Asia/Kolkata",
            &[("friday", "12:00", "15:00"), ("friday", "19:00", "01:00")],
        );
        let friday = d("2026-03-06");
        assert_eq!(friday.weekday(), Weekday::Fri);
        let now = days_before("2026-03-06");
        let starts = s.starts_on(friday, now);
        // Lunch: 12:00 … 13:30 (7 starts); dinner: 19:00 … 23:30 (19 starts).
        assert_eq!(starts.len(), 7 + 19);
        let local = |i: usize| starts[i].with_timezone(&s.tz).format("%a %H:%M").to_string();
        assert_eq!(local(0), "Fri 12:00");
        assert_eq!(local(6), "Fri 13:30");
        assert_eq!(local(7), "Fri 19:00");
        assert_eq!(local(25), "Fri 23:30");
        // 23:30 Friday runs to 01:00 Saturday: inside Friday's overnight range.
        assert!(
            s.check_start(local_start(s.tz, "2026-03-06T23:30").unwrap(), now)
                .is_ok()
        );
        // 23:45 would end 01:15: past closing. 15:00 is between ranges.
        assert_eq!(
            s.check_start(local_start(s.tz, "2026-03-06T23:45").unwrap(), now),
            Err(StartRefused::OutsideHours)
        );
        assert_eq!(
            s.check_start(local_start(s.tz, "2026-03-06T14:00").unwrap(), now),
            Err(StartRefused::OutsideHours)
        );
        assert_eq!(
            s.check_start(local_start(s.tz, "2026-03-06T12:10").unwrap(), now),
            Err(StartRefused::NotASlot)
        );
        // Saturday has no hours of its own.
        assert!(s.starts_on(d("2026-03-07"), now).is_empty());
    }

    #[test]
    fn a_closure_removes_its_days_including_their_overnight_ranges() {
        let mut s = schedule(
            "Asia/Kolkata",
            &[("friday", "19:00", "01:00"), ("saturday", "19:00", "23:00")],
        );
        s.closures.push(Closure {
            from: d("2026-03-06"),
            to: d("2026-03-06"),
        });
        let now = days_before("2026-03-06");
        assert!(s.starts_on(d("2026-03-06"), now).is_empty());
        assert_eq!(
            s.check_start(local_start(s.tz, "2026-03-06T23:00").unwrap(), now),
            Err(StartRefused::OutsideHours)
        );
        assert!(!s.starts_on(d("2026-03-07"), now).is_empty(), "the next day is open");
    }

    #[test]
    fn the_window_and_the_lead_time_bound_starts() {
        let s = schedule(
            "Asia/Kolkata",
            &[("monday", "08:00", "23:00"), ("tuesday", "08:00", "23:00")],
        );
        let now = local_start(s.tz, "2026-03-09T12:00").unwrap();
        let too_soon = local_start(s.tz, "2026-03-09T12:15").unwrap();
        assert_eq!(s.check_start(too_soon, now), Err(StartRefused::TooSoon));
        assert!(
            s.check_start(local_start(s.tz, "2026-03-09T12:30").unwrap(), now)
                .is_ok()
        );
        let starts = s.starts_on(d("2026-03-09"), now);
        assert_eq!(starts[0], local_start(s.tz, "2026-03-09T12:30").unwrap());
        let far = local_start(s.tz, "2026-05-11T12:00").unwrap();
        assert_eq!(s.check_start(far, now), Err(StartRefused::TooFar));
    }

    #[test]
    fn slots_across_the_spring_forward_night_in_new_york() {
        // 2026-03-08: at 02:00 EST clocks go to 03:00 EDT.
        let s = schedule("America/New_York", &[("sunday", "00:00", "04:00")]);
        assert_eq!(local_start(s.tz, "2026-03-08T02:30"), Err(LocalTimeError::DoesNotExist));
        let starts = s.starts_on(d("2026-03-08"), days_before("2026-03-08"));
        // 00:00 EST = 05:00Z … 04:00 EDT = 08:00Z: three real hours, so (180 - 90) / 15 + 1.
        assert_eq!(starts.len(), 7);
        assert_eq!(starts[0], utc("2026-03-08T05:00:00Z"));
        assert_eq!(*starts.last().unwrap(), utc("2026-03-08T06:30:00Z"));
        // Shown locally, the last start reads 01:30 EST; 01:45 + 90 min runs past 04:00 EDT.
        assert_eq!(starts[6].with_timezone(&s.tz).format("%H:%M").to_string(), "01:30");
    }

    #[test]
    fn a_repeated_local_time_in_the_fall_takes_the_earlier_offset() {
        // 2026-11-01: at 02:00 EDT clocks go back to 01:00 EST, so 01:30 happens twice.
        let tz = parse_zone("America/New_York").unwrap();
        assert_eq!(
            local_start(tz, "2026-11-01T01:30").unwrap(),
            utc("2026-11-01T05:30:00Z")
        );
        let s = schedule("America/New_York", &[("sunday", "00:00", "04:00")]);
        // 00:00 EDT = 04:00Z … 04:00 EST = 09:00Z: five real hours.
        assert_eq!(
            s.starts_on(d("2026-11-01"), days_before("2026-11-01")).len(),
            (300 - 90) / 15 + 1
        );
        assert_eq!(local_start(tz, "2026-11-01 01:30"), Err(LocalTimeError::Malformed));
    }

    #[test]
    fn hours_are_checked_field_by_field_and_may_not_overlap() {
        let err = parse_hours(&[("funday", "25:00", "10:00")]).unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["hours[0].weekday", "hours[0].opens"]);
        assert!(parse_hours(&[("monday", "10:00", "10:00")]).is_err());
        let overlap = parse_hours(&[("monday", "10:00", "14:00"), ("monday", "13:00", "16:00")]).unwrap_err();
        assert_eq!(overlap[0].field, "hours[1]");
        // Sunday night past midnight runs into Monday morning.
        assert!(parse_hours(&[("sunday", "20:00", "02:00"), ("monday", "01:00", "05:00")]).is_err());
        assert!(parse_hours(&[("sunday", "20:00", "02:00"), ("monday", "02:00", "05:00")]).is_ok());
    }

    #[test]
    fn the_smallest_fitting_active_table_comes_first() {
        let id = |n: u128| uuid::Uuid::from_u128(n);
        let tables = [
            TableFit {
                id: id(1),
                min_seats: 2,
                max_seats: 8,
                active: true,
            },
            TableFit {
                id: id(2),
                min_seats: 1,
                max_seats: 4,
                active: true,
            },
            TableFit {
                id: id(3),
                min_seats: 3,
                max_seats: 4,
                active: true,
            },
            TableFit {
                id: id(4),
                min_seats: 1,
                max_seats: 4,
                active: false,
            },
            TableFit {
                id: id(5),
                min_seats: 5,
                max_seats: 6,
                active: true,
            },
        ];
        let ids = |party| fitting_tables(&tables, party).iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(ids(3), [id(2), id(3), id(1)]);
        assert_eq!(ids(2), [id(2), id(1)]);
        assert_eq!(ids(9), Vec::<uuid::Uuid>::new());
    }

    #[test]
    fn a_sitting_covers_whole_grid_cells() {
        let start = utc("2026-03-06T13:30:00Z");
        let cells = cells(start, start + Duration::minutes(90), Duration::minutes(15));
        assert_eq!(cells.len(), 6);
        let next = super::cells(
            start + Duration::minutes(90),
            start + Duration::minutes(180),
            Duration::minutes(15),
        );
        assert!(
            cells.iter().all(|c| !next.contains(c)),
            "back-to-back sittings share no cell"
        );
    }

    #[test]
    fn guests_cancel_until_the_cutoff_and_owners_until_the_end() {
        let p = Policy::default();
        let start = utc("2026-03-06T19:00:00Z");
        assert!(may_cancel(&p, start, utc("2026-03-06T17:00:00Z"), false));
        assert!(!may_cancel(&p, start, utc("2026-03-06T17:01:00Z"), false));
        assert!(may_cancel(&p, start, utc("2026-03-06T20:00:00Z"), true));
        assert!(!may_cancel(&p, start, utc("2026-03-06T20:30:00Z"), true));
    }

    #[test]
    fn a_table_takes_exactly_the_parties_between_its_seats() {
        let bits = party_bits(2, 4);
        assert!((1..=SEATS_MAX).all(|p| (bits & (1 << p) != 0) == (2..=4).contains(&p)));
        let all = party_bits(1, SEATS_MAX);
        assert!((1..=SEATS_MAX).all(|p| all & (1 << p) != 0));
        assert_eq!(all & 1, 0, "no party of 0");
        assert_eq!(party_bits(5, 4), 0);
    }

    #[test]
    fn a_day_offers_a_start_only_to_parties_a_free_table_takes() {
        let s = schedule("Asia/Kolkata", &[("friday", "18:00", "21:00")]);
        let (two, six) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let tables = [
            TableFit {
                id: two,
                min_seats: 1,
                max_seats: 2,
                active: true,
            },
            TableFit {
                id: six,
                min_seats: 4,
                max_seats: 6,
                active: true,
            },
        ];
        let date = d("2026-03-06");
        let first = utc("2026-03-06T12:30:00Z"); // 18:00 in Kolkata
        let holds = [Hold {
            table_id: six,
            starts_at: first,
            ends_at: first + Duration::minutes(90),
        }];
        let day = Day::build(&s, &tables, &holds, date);
        let now = utc("2026-03-01T00:00:00Z");
        let for_two: Vec<_> = day.starts_for(2, now).collect();
        let for_five: Vec<_> = day.starts_for(5, now).collect();
        assert_eq!(for_two.first(), Some(&first));
        assert_eq!(for_two.len(), 7, "18:00 to 19:30 every 15 minutes");
        assert_eq!(
            for_five.first(),
            Some(&(first + Duration::minutes(90))),
            "the six-seater is held until 19:30"
        );
        assert!(day.starts_for(3, now).next().is_none(), "no table takes three");
        assert!(day.starts_for(0, now).next().is_none());
        assert!(day.starts_for(SEATS_MAX + 1, now).next().is_none());
    }
}
