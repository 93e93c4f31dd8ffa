//! Which resource a management API request names, read from its path. The path comes from the
//! network, so this is one of the parsers the fuzz targets exercise (`connection-host/fuzz`).

/// What a request path on the management listener names. Whether the method fits, whether the
/// groups extension is on and whether an ID is well formed are checked by the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/{stage}`, `/{stage}/`, or a path under it that names no API (`/{stage}/x/y`, any path
    /// whose first segment after the stage does not start with `@`): the WebSocket URL.
    Stage,
    /// `/{stage}/@connections/{connectionId}`: PostToConnection, GetConnection, DeleteConnection.
    Connection(&'a str),
    /// `/{stage}/@connections/{connectionId}/groups/{group}` (the groups extension).
    Membership {
        /// The connection joining or leaving.
        connection_id: &'a str,
        /// The group's name.
        group: &'a str,
    },
    /// `/{stage}/@groups/{group}` (the groups extension).
    Group(&'a str),
    /// `/{stage}/@groups/{group}/count` (the groups extension).
    GroupCount(&'a str),
    /// `/{stage}/@internal/deliver`: a broadcast handed on by another host of the cluster.
    Deliver,
    /// `/{stage}/@internal/handover`: another host of the cluster takes a reliable session over.
    HandOver,
    /// `/{stage}/@internal/hello`: a host of the cluster that just started says where it is.
    Hello,
    /// `/2015-03-31/functions/{FunctionName}/invocations`: the Lambda Invoke API.
    Invocation(&'a str),
    /// Any other path.
    Unknown,
}

impl Resource<'_> {
    /// Whether the path is one of the `@connections` or `@groups` APIs, which share the
    /// management API's request rate (as API Gateway's account-wide quota does).
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            Self::Connection(_) | Self::Membership { .. } | Self::Group(_) | Self::GroupCount(_)
        )
    }
}

/// The path split into percent-decoded segments: `%40connections` becomes `@connections`, and an
/// encoded `/` inside an ID stays within its segment. Invalid UTF-8 is replaced, so such an ID is
/// simply malformed rather than an error of its own.
pub fn segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

/// The resource that `segments` (from [`segments`]) name on a host serving `stage`.
pub fn resource<'a>(stage: &str, segments: &'a [String]) -> Resource<'a> {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["2015-03-31", "functions", name, "invocations"] => Resource::Invocation(name),
        [s, rest @ ..] if *s == stage => match rest {
            [] | [""] => Resource::Stage,
            ["@connections", id] => Resource::Connection(id),
            ["@connections", id, "groups", group] => Resource::Membership {
                connection_id: id,
                group,
            },
            ["@groups", group] => Resource::Group(group),
            ["@groups", group, "count"] => Resource::GroupCount(group),
            ["@internal", "deliver"] => Resource::Deliver,
            ["@internal", "handover"] => Resource::HandOver,
            ["@internal", "hello"] => Resource::Hello,
            // `@…` is the APIs' namespace: a malformed API path stays unknown.
            [api, ..] if api.starts_with('@') => Resource::Unknown,
            _ => Resource::Stage,
        },
        _ => Resource::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(stage: &str, path: &str) -> String {
        format!("{:?}", resource(stage, &segments(path)))
    }

    #[test]
    fn names_each_api() {
        assert_eq!(of("dev", "/dev"), "Stage");
        assert_eq!(of("dev", "/dev/"), "Stage");
        assert_eq!(of("dev", "/dev/x"), "Stage");
        assert_eq!(of("dev", "/dev/x/y"), "Stage");
        assert_eq!(of("dev", "/dev/@connections/abc="), r#"Connection("abc=")"#);
        assert_eq!(
            of("dev", "/dev/%40connections/abc%3D"),
            r#"Connection("abc=")"#
        );
        assert_eq!(
            of("dev", "/dev/@connections/abc=/groups/room"),
            r#"Membership { connection_id: "abc=", group: "room" }"#
        );
        assert_eq!(of("dev", "/dev/@groups/room"), r#"Group("room")"#);
        assert_eq!(
            of("dev", "/dev/@groups/room/count"),
            r#"GroupCount("room")"#
        );
        assert_eq!(of("dev", "/dev/@internal/deliver"), "Deliver");
        assert_eq!(of("dev", "/dev/@internal/handover"), "HandOver");
        assert_eq!(of("dev", "/dev/@internal/hello"), "Hello");
        assert_eq!(
            of("dev", "/2015-03-31/functions/chat/invocations"),
            r#"Invocation("chat")"#
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for path in [
            "/",
            "",
            "/prod/@connections/abc=",
            "/dev/@connections",
            "/dev/@connections/a/b",
            "/dev/@connections/abc=/groups",
            "/dev/@groups/room/other",
            "/dev/@groups/room/count/x",
            "/dev/@other/x",
            "/2015-03-31/functions/chat",
        ] {
            assert_eq!(of("dev", path), "Unknown", "{path}");
        }
    }

    #[test]
    fn an_encoded_slash_stays_in_its_segment() {
        assert_eq!(of("dev", "/dev/@connections/a%2Fb"), r#"Connection("a/b")"#);
    }

    #[test]
    fn only_the_api_paths_are_rate_limited() {
        let limited = |p: &str| resource("dev", &segments(p)).is_rate_limited();
        assert!(limited("/dev/@connections/abc="));
        assert!(limited("/dev/@groups/room"));
        assert!(limited("/dev/@groups/room/count"));
        assert!(limited("/dev/@connections/abc=/groups/room"));
        assert!(!limited("/dev"));
        assert!(!limited("/2015-03-31/functions/chat/invocations"));
    }
}
