//! Management API paths and connection IDs, as they arrive from the network: the first line of
//! the input is the stage, the rest the request path.
#![no_main]

use connection_host::ids::is_well_formed_id;
use connection_host::management::path::{Resource, resource, segments};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (stage, path) = text.split_once('\n').unwrap_or(("dev", text));
    let segs = segments(path);
    let found = resource(stage, &segs);
    if let Resource::Connection(id) = found {
        // A connection ID sent fully percent-encoded names the same connection.
        let encoded = format!(
            "/{}/%40connections/{}",
            utf8_percent_encode(stage, NON_ALPHANUMERIC),
            utf8_percent_encode(id, NON_ALPHANUMERIC)
        );
        assert_eq!(resource(stage, &segments(&encoded)), found, "{encoded}");
        // Only IDs of API Gateway's shape reach the registry; the check must not panic on any.
        if is_well_formed_id(id) {
            assert_eq!(id.len(), 16);
        }
    }
});
