//! Payments service (issue 10), being built in steps. Today it holds the domain only: the order
//! state machine (a pure function from an order and a gateway event to the next order and the
//! effects to carry out) and the checks of Razorpay's signatures. The store, gRPC service,
//! gateway adapter and workers come next; nothing runs this crate yet.
#![forbid(unsafe_code)]

pub mod domain;
pub mod signature;
