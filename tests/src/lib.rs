//! End-to-end tests live in tests/.
//! This library holds what the tests and the examples (benchmarks, the load generator) share.

use std::collections::HashMap;

/// Rate limits no test meets unless it means to: every end-to-end test talks from 127.0.0.1,
/// and most sign up more than five accounts. The rate-limit tests set real budgets in `extra`.
pub const UNLIMITED: &[(&str, &str)] = &[
    ("THALI_RATE_LIMIT_ANONYMOUS", "1000000/min"),
    ("THALI_RATE_LIMIT_SIGNED_IN", "1000000/min"),
    ("THALI_RATE_LIMIT_LOGIN", "1000000/min"),
    ("THALI_RATE_LIMIT_LOGIN_ADDRESS", "1000000/min"),
    ("THALI_RATE_LIMIT_REGISTER", "1000000/min"),
    ("THALI_RATE_LIMIT_API_KEY", "1000000/min"),
    ("THALI_RATE_LIMIT_WEBHOOK", "1000000/min"),
];

/// A whole platform's settings on loopback ports the system picks, data under `data_dir`, with
/// [`UNLIMITED`] rate limits.
pub fn loopback_env(data_dir: &std::path::Path) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("THALI_DATA_DIR", data_dir.display().to_string()),
        ("THALI_HTTP_ADDR", "127.0.0.1:0".into()),
        ("THALI_GRPC_ADDR", "127.0.0.1:0".into()),
        ("THALI_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("THALI_SANDBOX_ADDR", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in UNLIMITED {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    env
}
