//! What a function process is started with: its expanded command and Lambda's environment.

use super::{Function, RuntimeSettings};
use std::net::SocketAddr;

/// Replaces `${NAME}` and `${NAME:-default}` with environment values (an unset or empty variable
/// takes the default, as in POSIX shells), so configs can name paths such as the Cargo target dir.
pub(super) fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 2..start + len];
        let (name, default) = inner.split_once(":-").unwrap_or((inner, ""));
        match lookup(name).filter(|v| !v.is_empty()) {
            Some(value) => out.push_str(&value),
            None => out.push_str(default),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// The variables Lambda sets for a function (a `lambda_runtime` binary panics without the first
/// four), then the function's own from its config, which win.
pub(super) fn variables(
    function: &Function,
    settings: &RuntimeSettings,
    runtime_api: SocketAddr,
    index: usize,
) -> Vec<(String, String)> {
    let name = &function.name;
    let mut vars = vec![
        ("AWS_LAMBDA_RUNTIME_API".into(), runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), name.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            function.config.memory_size.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".into(),
            format!("/aws/lambda/{name}"),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME".into(),
            format!("local/{name}/{index}"),
        ),
        ("AWS_LAMBDA_INITIALIZATION_TYPE".into(), "on-demand".into()),
        ("AWS_REGION".into(), settings.region.clone()),
        ("AWS_DEFAULT_REGION".into(), settings.region.clone()),
        (
            "APIGW_MANAGEMENT_ENDPOINT".into(),
            settings.management_endpoint.clone(),
        ),
    ];
    // SDK clients inside the function sign their requests and refuse to run without credentials.
    // When the host checks signatures, functions get a key it accepts (over the host's own, which
    // it would refuse); otherwise placeholders do when the host has none.
    if let Some(key) = &settings.credentials {
        vars.push(("AWS_ACCESS_KEY_ID".into(), key.id.clone()));
        vars.push((
            "AWS_SECRET_ACCESS_KEY".into(),
            key.secret.expose().to_string(),
        ));
    } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        vars.push(("AWS_ACCESS_KEY_ID".into(), "local".into()));
        vars.push(("AWS_SECRET_ACCESS_KEY".into(), "local".into()));
    }
    vars.extend(
        function
            .config
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    vars
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("/cache/target".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(expand("${SET}/debug/chat", env), "/cache/target/debug/chat");
        assert_eq!(
            expand("${UNSET:-target}/debug/chat", env),
            "target/debug/chat"
        );
        assert_eq!(expand("${EMPTY:-target}/x", env), "target/x");
        assert_eq!(expand("${SET:-target}/x", env), "/cache/target/x");
        assert_eq!(expand("${UNSET}/x", env), "/x");
        assert_eq!(expand("plain/path", env), "plain/path");
        assert_eq!(expand("a${SET}b${UNSET:-c}d", env), "a/cache/targetbcd");
        assert_eq!(expand("broken${SET", env), "broken${SET");
    }
}
