//! Lambda proxy responses: whatever a handler returns is parsed by the host.
#![no_main]

use connection_host::events::ProxyResponse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = ProxyResponse::parse(data) {
        // An accepted status code is always a valid HTTP status.
        if let Some(code) = response.status_code {
            assert!((100..=599).contains(&code), "accepted statusCode {code}");
        }
    }
});
