//! Razorpay's two signatures, both hex HMAC-SHA256:
//!
//! - a webhook's `X-Razorpay-Signature`, keyed with the webhook secret, over the raw body;
//! - the checkout's `razorpay_signature`, keyed with the key secret, over
//!   `order_id + "|" + payment_id`.
//!
//! Checked in constant time (`ring::hmac::verify`) over bytes as received: nothing is parsed
//! before the signature holds.
use ring::hmac;

/// Hex HMAC-SHA256 of `message` under `secret` (what a sender puts in the header).
pub fn sign_hex(secret: &[u8], message: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::sign(&key, message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `signature` (hex, either case) is the HMAC-SHA256 of `message` under `secret`. A
/// missing, empty, malformed or wrong-length signature is simply not valid.
pub fn is_valid(secret: &[u8], message: &[u8], signature: &str) -> bool {
    let Some(tag) = decode_hex(signature.trim()) else {
        return false;
    };
    if secret.is_empty() {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, message, &tag).is_ok()
}

/// A webhook body's signature, keyed with the account's webhook secret.
pub fn webhook_is_valid(webhook_secret: &[u8], raw_body: &[u8], signature: Option<&str>) -> bool {
    signature.is_some_and(|s| is_valid(webhook_secret, raw_body, s))
}

/// The checkout's signature over `order_id|payment_id`, keyed with the key secret.
pub fn checkout_is_valid(key_secret: &[u8], order_id: &str, payment_id: &str, signature: &str) -> bool {
    is_valid(key_secret, format!("{order_id}|{payment_id}").as_bytes(), signature)
}

/// 64 hex digits → 32 bytes; anything else → None.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_platform";
    const BODY: &[u8] = br#"{"entity":"event","event":"payment.captured","payload":{}}"#;

    #[test]
    fn a_known_vector_matches() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_webhook_signature_holds_only_for_its_secret_and_its_exact_body() {
        let good = sign_hex(SECRET, BODY);
        assert!(webhook_is_valid(SECRET, BODY, Some(&good)));
        assert!(webhook_is_valid(SECRET, BODY, Some(&good.to_uppercase())));
        assert!(!webhook_is_valid(SECRET, BODY, None), "missing");
        assert!(!webhook_is_valid(SECRET, BODY, Some("")), "empty");
        assert!(!webhook_is_valid(SECRET, BODY, Some("not hex at all")));
        assert!(!webhook_is_valid(SECRET, BODY, Some(&good[..62])), "short");
        assert!(
            !webhook_is_valid(b"whsec_another_account", BODY, Some(&good)),
            "another account's secret"
        );
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert!(!webhook_is_valid(SECRET, &changed, Some(&good)), "one byte changed");
        let mut flipped = good.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!webhook_is_valid(
            SECRET,
            BODY,
            Some(std::str::from_utf8(&flipped).unwrap())
        ));
        assert!(
            !webhook_is_valid(b"", BODY, Some(&sign_hex(b"", BODY))),
            "no secret, no trust"
        );
    }

    #[test]
    fn the_checkout_signature_covers_order_and_payment() {
        let sig = sign_hex(b"key_secret", b"order_A|pay_B");
        assert!(checkout_is_valid(b"key_secret", "order_A", "pay_B", &sig));
        assert!(!checkout_is_valid(b"key_secret", "order_A", "pay_C", &sig));
        assert!(!checkout_is_valid(b"key_secret", "order_B", "pay_B", &sig));
        assert!(!checkout_is_valid(b"other_secret", "order_A", "pay_B", &sig));
    }
}
