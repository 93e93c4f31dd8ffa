//! The checks a configuration passes before `Host::build` reads any file: ranges and
//! references the schema alone cannot express.

use super::*;

impl Config {
    /// Checks ranges and references that the schema alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        let api = &self.api;
        if api.api_id.len() != 10
            || !api
                .api_id
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return invalid(
                "api.api_id".into(),
                "must be 10 lower-case letters or digits, like API Gateway's API IDs",
            );
        }
        if api.stage.is_empty()
            || !api
                .stage
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return invalid(
                "api.stage".into(),
                "must be non-empty and use only letters, digits, '-' and '_'",
            );
        }
        if self.server.management_tls.is_some() && self.server.management_listen.is_none() {
            return invalid(
                "server.management_tls".into(),
                "needs server.management_listen: without it the management API is served on the public listener, which server.tls covers",
            );
        }
        let l = &self.limits;
        if l.frame_size < 1024 || l.frame_size > l.message_size {
            return invalid(
                "limits.frame_size".into(),
                "must be at least 1024 and not larger than limits.message_size",
            );
        }
        if l.post_size == 0 {
            return invalid("limits.post_size".into(), "must be positive");
        }
        if l.idle_timeout.is_zero() || l.max_connection_duration.is_zero() {
            return invalid(
                "limits.idle_timeout".into(),
                "idle_timeout and max_connection_duration must be positive",
            );
        }
        if !l.ping_interval.is_zero() && l.missed_pongs == 0 {
            return invalid(
                "limits.missed_pongs".into(),
                "must be at least 1 when ping_interval is set",
            );
        }
        if l.outbound_queue_bytes < l.post_size {
            return invalid(
                "limits.outbound_queue_bytes".into(),
                "must hold at least one message of limits.post_size bytes",
            );
        }
        if l.max_inflight_messages == 0 {
            return invalid("limits.max_inflight_messages".into(), "must be at least 1");
        }
        if l.read_buffer_size < 512 {
            return invalid("limits.read_buffer_size".into(), "must be at least 512");
        }
        if l.messages_per_second > 0 && l.message_burst == 0 {
            return invalid(
                "limits.message_burst".into(),
                "must be at least 1 when limits.messages_per_second is set",
            );
        }
        if l.management_requests_per_second > 0 && l.management_burst == 0 {
            return invalid(
                "limits.management_burst".into(),
                "must be at least 1 when limits.management_requests_per_second is set",
            );
        }
        // A rate is requests per second: fractional is fine, negative or not a number is not.
        let bad_rate = |rate: Option<f64>| rate.is_some_and(|r| !r.is_finite() || r < 0.0);
        if bad_rate(api.default_route_settings.throttling_rate_limit) {
            return invalid(
                "api.default_route_settings.throttling_rate_limit".into(),
                "must be a finite number of requests per second, 0 or more",
            );
        }
        for (key, route) in &self.routes {
            let field = |name: &str| format!("routes.\"{key}\".{name}");
            if key.is_empty() {
                return invalid("routes".into(), "a route key must not be empty");
            }
            // The key is the Route dimension's value, which CloudWatch takes only so.
            if self.metrics.emf
                && (key.len() > 1024
                    || key.trim().is_empty()
                    || !key.bytes().all(|c| c.is_ascii_graphic() || c == b' '))
            {
                return invalid(
                    format!("routes.\"{key}\""),
                    "with metrics.emf, a route key must be at most 1024 printable ASCII characters (CloudWatch's rule for dimension values)",
                );
            }
            if bad_rate(route.throttling_rate_limit) {
                return invalid(
                    field("throttling_rate_limit"),
                    "must be a finite number of requests per second, 0 or more",
                );
            }
            if !self.integrations.contains_key(&route.integration) {
                return invalid(
                    field("integration"),
                    &format!(
                        "no integration named \"{}\" in [integrations]",
                        route.integration
                    ),
                );
            }
            if route.timeout < Duration::from_millis(50) || route.timeout > Duration::from_secs(29)
            {
                return invalid(
                    field("timeout"),
                    "must be between 50ms and 29s (API Gateway's integration timeout range)",
                );
            }
            if route.two_way && (key == "$connect" || key == "$disconnect") {
                return invalid(
                    field("two_way"),
                    "$connect and $disconnect cannot send route responses to the client",
                );
            }
            if let Some(authorizer) = &route.authorizer {
                if key != "$connect" {
                    return invalid(
                        field("authorizer"),
                        "only the $connect route can have an authorizer (it guards the whole connection)",
                    );
                }
                if !self.authorizers.contains_key(authorizer) {
                    return invalid(
                        field("authorizer"),
                        &format!("no authorizer named \"{authorizer}\" in [authorizers]"),
                    );
                }
            }
        }
        for (name, authorizer) in &self.authorizers {
            let field = |f: &str| format!("authorizers.{name}.{f}");
            match authorizer {
                AuthorizerConfig::Request(authorizer) => {
                    if authorizer.function_name.is_empty() {
                        return invalid(field("function_name"), "must not be empty");
                    }
                    if !authorizer.endpoint_url.is_empty() && !is_http_url(&authorizer.endpoint_url)
                    {
                        return invalid(
                            field("endpoint_url"),
                            "must be an http:// or https:// URL",
                        );
                    }
                }
                // The keys are read by `Host::build`, which `config check` runs too.
                AuthorizerConfig::Jwt(_) => {}
            }
        }
        for (name, integration) in &self.integrations {
            let field = |f: &str| format!("integrations.{name}.{f}");
            match integration {
                IntegrationConfig::Lambda {
                    function_name,
                    endpoint_url,
                    ..
                } => {
                    if function_name.is_empty() {
                        return invalid(field("function_name"), "must not be empty");
                    }
                    if !endpoint_url.is_empty() && !is_http_url(endpoint_url) {
                        return invalid(
                            field("endpoint_url"),
                            "must be an http:// or https:// URL",
                        );
                    }
                }
                IntegrationConfig::Http { url } | IntegrationConfig::HttpProxy { url, .. } => {
                    if !is_http_url(url) {
                        return invalid(field("url"), "must be an http:// or https:// URL");
                    }
                }
                IntegrationConfig::Mock { status_code, .. } => {
                    if !(100..=599).contains(status_code) {
                        return invalid(field("status_code"), "must be an HTTP status code");
                    }
                }
            }
            if let IntegrationConfig::HttpProxy { method, .. } = integration
                && http::Method::from_bytes(method.as_bytes()).is_err()
            {
                return invalid(field("method"), "must be an HTTP method");
            }
        }
        for (name, function) in &self.functions {
            let field = |f: &str| format!("functions.{name}.{f}");
            if !is_function_name(name) {
                return invalid(
                    format!("functions.{name}"),
                    "a function name is 1 to 64 letters, digits, '-' or '_'",
                );
            }
            if function.command.is_empty() {
                return invalid(field("command"), "must name the function's executable");
            }
            if !(128..=10240).contains(&function.memory_size) {
                return invalid(field("memory_size"), "must be between 128 and 10240 (MB)");
            }
            if function.timeout < Duration::from_secs(1)
                || function.timeout > Duration::from_secs(900)
            {
                return invalid(
                    field("timeout"),
                    "must be between 1s and 900s (Lambda's range)",
                );
            }
            if !(1..=64).contains(&function.concurrency) {
                return invalid(field("concurrency"), "must be between 1 and 64 processes");
            }
        }
        let store = &self.store;
        for (field, name) in [
            ("store.connections_table", &store.connections_table),
            ("store.groups_table", &store.groups_table),
            ("store.sessions_table", &store.sessions_table),
        ] {
            if !is_table_name(name) {
                return invalid(
                    field.into(),
                    "must be a DynamoDB table name: 3 to 255 letters, digits, '_', '-' or '.'",
                );
            }
        }
        if store.connections_table == store.groups_table {
            return invalid(
                "store.groups_table".into(),
                "must differ from store.connections_table (the tables have different keys)",
            );
        }
        if store.sessions_table == store.connections_table
            || store.sessions_table == store.groups_table
        {
            return invalid(
                "store.sessions_table".into(),
                "must differ from store.connections_table and store.groups_table (the tables have different keys)",
            );
        }
        if !(1..=256).contains(&store.group_shards) {
            return invalid("store.group_shards".into(), "must be between 1 and 256");
        }
        let groups = &self.extensions.groups;
        if groups.presence != Presence::Off && !groups.enabled {
            return invalid(
                "extensions.groups.presence".into(),
                "needs the groups API: set extensions.groups.enabled = true",
            );
        }
        if groups.presence_route.is_empty() {
            return invalid(
                "extensions.groups.presence_route".into(),
                "must name a route",
            );
        }
        if !store.endpoint_url.is_empty() && !is_http_url(&store.endpoint_url) {
            return invalid(
                "store.endpoint_url".into(),
                "must be an http:// or https:// URL",
            );
        }
        let groups = &self.extensions.groups;
        if !(1..=256).contains(&groups.remote_concurrency) {
            return invalid(
                "extensions.groups.remote_concurrency".into(),
                "must be between 1 and 256 calls",
            );
        }
        if groups.remote_timeout < Duration::from_millis(100) {
            return invalid(
                "extensions.groups.remote_timeout".into(),
                "must be at least 100ms",
            );
        }
        if groups.fanout_rate > 0 && groups.fanout_burst == 0 {
            return invalid(
                "extensions.groups.fanout_burst".into(),
                "must be positive while fanout_rate is set",
            );
        }
        let cluster = &self.cluster;
        if !cluster.host_id.is_empty() && !is_host_id(&cluster.host_id) {
            return invalid(
                "cluster.host_id".into(),
                "must be at most 64 letters, digits, '-', '_' or '.'",
            );
        }
        if cluster.heartbeat_interval < Duration::from_millis(100) {
            return invalid(
                "cluster.heartbeat_interval".into(),
                "must be at least 100ms",
            );
        }
        if cluster.host_timeout < cluster.heartbeat_interval * 2 {
            return invalid(
                "cluster.host_timeout".into(),
                "must be at least twice cluster.heartbeat_interval, or one late heartbeat kills a host",
            );
        }
        let auth = &self.management.auth;
        if auth.clock_skew < Duration::from_secs(1) || auth.clock_skew > Duration::from_secs(3600) {
            return invalid(
                "management.auth.clock_skew".into(),
                "must be between 1s and 1h (AWS allows 5m)",
            );
        }
        for (id, key) in &auth.keys {
            if id.is_empty() || id.len() > 128 || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return invalid(
                    format!("management.auth.keys.{id}"),
                    "an access key ID is 1 to 128 letters or digits",
                );
            }
            if key.sources() != 1 {
                return invalid(
                    format!("management.auth.keys.{id}"),
                    "set exactly one of secret_env, secret_file or secret",
                );
            }
        }
        let metrics = &self.metrics;
        if metrics.emf_interval < Duration::from_millis(100) {
            return invalid("metrics.emf_interval".into(), "must be at least 100ms");
        }
        let namespace = &metrics.emf_namespace;
        if namespace.trim().is_empty()
            || namespace.len() > 255
            || namespace.starts_with("AWS/")
            || !namespace
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-_/#: ".contains(&c))
        {
            return invalid(
                "metrics.emf_namespace".into(),
                "must be 1 to 255 letters, digits or . - _ / # : and spaces, not starting with AWS/ (CloudWatch's rule)",
            );
        }
        if cluster.owner_cache_size == 0 {
            return invalid("cluster.owner_cache_size".into(), "must be at least 1");
        }
        if cluster.enabled() {
            if !is_http_url(&cluster.advertise_url) {
                return invalid(
                    "cluster.advertise_url".into(),
                    "must be an http:// or https:// URL",
                );
            }
            if cluster.secret.len() < 16 {
                return invalid(
                    "cluster.secret".into(),
                    "must be at least 16 characters when cluster.advertise_url is set (it authenticates host-to-host calls)",
                );
            }
            // Every host must hold the same bytes: a control character or surrounding whitespace
            // (a stray newline from a file or a variable) is a copy mistake that would leave this
            // host's signatures refused by every other.
            if http::HeaderValue::from_str(&cluster.secret).is_err()
                || cluster.secret.trim() != cluster.secret
            {
                return invalid(
                    "cluster.secret".into(),
                    "must be visible characters and inner spaces (no control characters such as a newline, no leading or trailing whitespace): every host of the cluster must hold exactly the same key",
                );
            }
            if store.kind == StoreKind::Memory {
                return invalid(
                    "cluster.advertise_url".into(),
                    "a cluster needs a shared store: set store.kind = \"dynamodb\"",
                );
            }
        }
        Ok(())
    }
}

fn is_host_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
}
