//! Which calls a client may send again. Every RPC is declared once, in one table per service
//! next to its generated client: `read` (no state changes: always retry-safe), `keyed` (changes
//! state; retry-safe only when the request carries an idempotency key, which makes a repeat
//! answer like the first), `idempotent` (changes state, and the receiver deduplicates by an id
//! the request always carries), or `never` (changes state without a key). A request type missing
//! from its table cannot be sent through the platform's client stack: it does not compile.

/// How the client stack may retry one RPC's request.
pub trait RetryPolicy {
    /// The RPC's name, for metrics labels.
    const METHOD: &'static str;
    /// Whether sending this request twice has the effect of sending it once.
    fn retry_safe(&self) -> bool;
}

/// Declares the retry policy of each request type of a service.
macro_rules! retry_table {
    ($($request:ty => $method:literal, $kind:ident;)*) => {
        $(
            impl $crate::retry::RetryPolicy for $request {
                const METHOD: &'static str = $method;
                fn retry_safe(&self) -> bool {
                    $crate::retry::retry_table!(@safe self, $kind)
                }
            }
        )*
    };
    (@safe $self:ident, read) => { true };
    (@safe $self:ident, never) => { false };
    (@safe $self:ident, idempotent) => { true };
    (@safe $self:ident, keyed) => { !$self.idempotency_key.is_empty() };
}
pub(crate) use retry_table;
