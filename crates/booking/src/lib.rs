//! Booking service: restaurants, tables, opening hours, availability and reservations that can
//! never double-book (issue 9). Built in steps: this step holds the domain rules (hours, closures,
//! the booking window, slot arithmetic across DST changes, table choice, cancellation) and the
//! store, whose constraint keeps a table from being booked twice. The gRPC service, workers and
//! REST routes come next; until then nothing serves bookings.
#![forbid(unsafe_code)]

pub mod domain;
pub mod store;
