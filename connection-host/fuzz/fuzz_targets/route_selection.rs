//! Route selection expressions (from configuration) and the message bodies they are evaluated
//! against (from clients): the first line of the input is the expression, the rest the body.
#![no_main]

use connection_host::routing::RouteSelectionExpression;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expression, body) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(parsed) = RouteSelectionExpression::parse(expression) else {
        return;
    };
    // What was parsed is kept verbatim (it is shown in errors and logs).
    assert_eq!(parsed.as_str(), expression);
    // Any body, JSON or not, gives a route key or none, never a panic.
    let _ = parsed.evaluate(body);
});
