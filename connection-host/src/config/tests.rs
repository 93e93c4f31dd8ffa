//! Loading and validation.

use super::*;

/// Parses and validates, as `Host::build` does before it reads any file.
fn checked(toml: &str) -> Result<Config, ConfigError> {
    let config = Config::from_toml(toml)?;
    config.validate()?;
    Ok(config)
}

#[test]
fn default_file_is_complete_and_equals_the_defaults() {
    let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).expect("default file parses");
    assert_eq!(parsed, Config::default());
}

#[test]
fn the_aws_profile_turns_the_extra_protections_off_unless_set_explicitly() {
    let aws = Config::from_toml("[api]\nprofile = \"aws\"").unwrap();
    assert_eq!(aws.api.profile, Profile::Aws);
    assert_eq!(aws.limits.ping_interval, Duration::ZERO);
    assert_eq!(aws.limits.messages_per_second, 0);
    assert_eq!(aws.limits.connections_per_principal, 0);
    // Everything else, API Gateway's quotas included, keeps its default.
    let expected = Config {
        api: ApiConfig {
            profile: Profile::Aws,
            ..ApiConfig::default()
        },
        limits: LimitsConfig {
            ping_interval: Duration::ZERO,
            messages_per_second: 0,
            connections_per_principal: 0,
            ..LimitsConfig::default()
        },
        ..Config::default()
    };
    assert_eq!(aws, expected);
    // An explicit setting wins over the profile's value.
    let mixed = Config::from_toml(
        "[api]\nprofile = \"aws\"\n[limits]\nping_interval = \"30s\"\nconnections_per_principal = 3",
    )
    .unwrap();
    assert_eq!(mixed.limits.ping_interval, Duration::from_secs(30));
    assert_eq!(mixed.limits.connections_per_principal, 3);
    assert_eq!(mixed.limits.messages_per_second, 0);
    let default = Config::from_toml("[api]\nprofile = \"default\"").unwrap();
    assert_eq!(default, Config::default());
    let err = Config::from_toml("[api]\nprofile = \"gcp\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("profile"), "{err}");
}

#[test]
fn durations_and_routes_parse() {
    let c = Config::from_toml(
        r#"
        [limits]
        idle_timeout = "5m"
        [routes."$default"]
        integration = "echo"
        two_way = true
        timeout = "500ms"
        [integrations.echo]
        type = "mock"
        response_template = "$input.body"
        "#,
    )
    .unwrap();
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
    let r = &c.routes["$default"];
    assert!(r.two_way);
    assert_eq!(r.timeout, Duration::from_millis(500));
}

#[test]
fn route_throttling_parses_and_is_validated() {
    let c = checked(
        r#"
        [api.default_route_settings]
        throttling_rate_limit = 0.5
        throttling_burst_limit = 2
        [routes.a]
        integration = "m"
        throttling_rate_limit = 100
        [routes.b]
        integration = "m"
        [integrations.m]
        type = "mock"
        "#,
    )
    .unwrap();
    let default = c.api.default_route_settings;
    assert_eq!(default.throttling_rate_limit, Some(0.5));
    assert_eq!(default.throttling_burst_limit, Some(2));
    // A route's own limit wins; the one it leaves unset is the stage's.
    let a = c.routes["a"].settings(default);
    assert_eq!(
        (a.throttling_rate_limit, a.throttling_burst_limit),
        (Some(100.0), Some(2))
    );
    assert_eq!(c.routes["b"].settings(default), default);
    assert!(Config::default().api.default_route_settings.is_unset());

    let route = "[integrations.m]\ntype = \"mock\"\n[routes.x]\nintegration = \"m\"\n";
    for (toml, field) in [
        (
            "[api.default_route_settings]\nthrottling_rate_limit = -1.0".to_string(),
            "api.default_route_settings.throttling_rate_limit",
        ),
        (
            "[api.default_route_settings]\nthrottling_rate_limit = nan".to_string(),
            "api.default_route_settings.throttling_rate_limit",
        ),
        (
            format!("{route}throttling_rate_limit = -0.5"),
            "routes.\"x\".throttling_rate_limit",
        ),
        (
            format!("{route}throttling_rate_limit = inf"),
            "routes.\"x\".throttling_rate_limit",
        ),
    ] {
        let err = checked(&toml).unwrap_err().to_string();
        assert!(err.contains(field), "{err} should name {field}");
    }
    for toml in [
        format!("{route}throttling_burst_limit = -1"),
        format!("{route}throttling_burst_limit = 1.5"),
        "[api.default_route_settings]\nthrottling_limit = 1".to_string(),
    ] {
        let err = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(err.contains("throttling"), "{err}");
    }
    // Zero is valid: it throttles every request, as on API Gateway.
    checked(&format!(
        "{route}throttling_rate_limit = 0\nthrottling_burst_limit = 0"
    ))
    .unwrap();
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            "[routes.\"$default\"]\nintegration = \"nope\"",
            "routes.\"$default\".integration",
        ),
        (
            "[routes.x]\nintegration = \"m\"\ntimeout = \"30s\"\n[integrations.m]\ntype = \"mock\"",
            "routes.\"x\".timeout",
        ),
        ("[api]\napi_id = \"UPPER\"", "api.api_id"),
        ("[limits]\nframe_size = 10", "limits.frame_size"),
        ("[limits]\nmessage_burst = 0", "limits.message_burst"),
        ("[limits]\nmanagement_burst = 0", "limits.management_burst"),
        (
            "[store]\nconnections_table = \"a b\"",
            "store.connections_table",
        ),
        (
            "[store]\ngroups_table = \"connection-host-connections\"",
            "store.groups_table",
        ),
        (
            "[store]\nsessions_table = \"connection-host-groups\"",
            "store.sessions_table",
        ),
        ("[store]\nsessions_table = \"x\"", "store.sessions_table"),
        (
            "[store]\nendpoint_url = \"localhost:8000\"",
            "store.endpoint_url",
        ),
        (
            "[integrations.h]\ntype = \"http\"\nurl = \"ftp://x\"",
            "integrations.h.url",
        ),
        ("[cluster]\nhost_id = \"a b\"", "cluster.host_id"),
        (
            "[cluster]\nheartbeat_interval = \"11s\"",
            "cluster.host_timeout",
        ),
        (
            "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"",
            "cluster.secret",
        ),
        (
            "[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \"0123456789abcdef\"",
            "store.kind",
        ),
        (
            "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"127.0.0.1:9080\"\nsecret = \"0123456789abcdef\"",
            "cluster.advertise_url",
        ),
        (
            // A secret read from a file with its newline, or pasted with a control character.
            "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \"0123456789abcdef\\n\"",
            "cluster.secret",
        ),
        (
            "[store]\nkind = \"dynamodb\"\n[cluster]\nadvertise_url = \"http://127.0.0.1:9080\"\nsecret = \" 0123456789abcdef\"",
            "cluster.secret",
        ),
        ("[metrics]\nemf_interval = \"10ms\"", "metrics.emf_interval"),
        (
            "[metrics]\nemf_namespace = \"AWS/ApiGateway\"",
            "metrics.emf_namespace",
        ),
        ("[metrics]\nemf_namespace = \"  \"", "metrics.emf_namespace"),
        // The route key is a dimension value: printable ASCII only, when EMF lines are written.
        (
            "[metrics]\nemf = true\n[routes.\"caf\u{e9}\"]\nintegration = \"m\"\n[integrations.m]\ntype = \"mock\"",
            "routes.\"caf\u{e9}\"",
        ),
    ];
    for (toml, field) in cases {
        let err = checked(toml).unwrap_err().to_string();
        assert!(err.contains(field), "{err} should name {field}");
    }
    let err = Config::from_toml("[limits]\nidle_timeout = 5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("idle_timeout"), "{err}");
    let err = Config::from_toml("[store]\nkind = \"redis\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("kind"), "{err}");
    let c = Config::from_toml("[store]\nkind = \"dynamodb\"").unwrap();
    assert_eq!(c.store.kind, StoreKind::Dynamodb);
    let err = Config::from_toml("[limits]\nbogus = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
    let err = Config::from_toml("[api]\nroute_selection_expression = \"${request.body\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("route_selection_expression"), "{err}");
}

#[test]
fn authorizers_parse_and_only_connect_may_name_one() {
    let base = "[integrations.m]\ntype = \"mock\"\n[authorizers.auth]\nfunction_name = \"authorizer\"\nidentity_sources = [\"route.request.header.Authorization\", \"route.request.querystring.token\"]\n";
    let c = Config::from_toml(&format!(
        "{base}[routes.\"$connect\"]\nintegration = \"m\"\nauthorizer = \"auth\""
    ))
    .unwrap();
    assert_eq!(c.routes["$connect"].authorizer.as_deref(), Some("auth"));
    let AuthorizerConfig::Request(auth) = &c.authorizers["auth"] else {
        panic!("a table without type is a Lambda REQUEST authorizer");
    };
    assert_eq!(auth.identity_sources.len(), 2);
    assert!(auth.endpoint_url.is_empty());
    let explicit = Config::from_toml(&base.replace(
        "[authorizers.auth]\n",
        "[authorizers.auth]\ntype = \"request\"\n",
    ))
    .unwrap();
    assert_eq!(explicit.authorizers, c.authorizers);
    let cases = [
        (
            format!("{base}[routes.\"$default\"]\nintegration = \"m\"\nauthorizer = \"auth\""),
            "routes.\"$default\".authorizer",
        ),
        (
            format!("{base}[routes.\"$connect\"]\nintegration = \"m\"\nauthorizer = \"nope\""),
            "routes.\"$connect\".authorizer",
        ),
        (
            "[authorizers.a]\nfunction_name = \"\"".to_string(),
            "authorizers.a.function_name",
        ),
        (
            "[authorizers.a]\nfunction_name = \"f\"\nendpoint_url = \"localhost:1\"".to_string(),
            "authorizers.a.endpoint_url",
        ),
        (
            "[authorizers.a]\nfunction_name = \"f\"\nidentity_sources = [\"header.Authorization\"]"
                .to_string(),
            "route.request.header.NAME",
        ),
    ];
    for (toml, expected) in cases {
        let err = checked(&toml).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should mention {expected}");
    }
}

#[test]
fn jwt_authorizers_parse() {
    // An absolute path: another test (figment's Jail) changes the working directory meanwhile.
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");
    let c = Config::from_toml(&format!(
        "[authorizers.j]\ntype = \"jwt\"\ntoken_source = \"subprotocol\"\nissuer = \"https://issuer.test\"\naudience = [\"api\"]\nleeway = \"5s\"\n[[authorizers.j.keys]]\nalgorithm = \"HS256\"\nsecret = \"s3cret\"\n[[authorizers.j.keys]]\njwks_file = \"{jwks}\"\n",
    ))
    .unwrap();
    let AuthorizerConfig::Jwt(j) = &c.authorizers["j"] else {
        panic!("type = \"jwt\" is a JWT authorizer");
    };
    assert_eq!(j.token_source, JwtTokenSource::Subprotocol);
    assert_eq!(j.leeway, Duration::from_secs(5));
    assert_eq!(j.keys.len(), 2);
    assert_eq!(j.subprotocol_marker, "bearer");
    assert!(!format!("{c:?}").contains("s3cret"));
    let cases = [
        (
            "[authorizers.j]\ntype = \"jwt\"\nfunction_name = \"f\"",
            "function_name",
        ),
        ("[authorizers.j]\ntype = \"token\"", "token"),
        ("[authorizers.j]\nidentity_sources = []", "function_name"),
    ];
    for (toml, expected) in cases {
        let err = checked(toml).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should mention {expected}");
    }
}

// figment's Jail closure must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
#[test]
fn access_key_ids_from_the_environment_keep_their_case() {
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "CONNECTION_HOST_MANAGEMENT__AUTH__KEYS__AKIAEXAMPLEENV01__SECRET",
            "s3cret-from-env",
        );
        jail.set_env("CONNECTION_HOST_MANAGEMENT__AUTH__CLOCK_SKEW", "1m");
        let c = Config::load(None, &Overrides::default()).expect("loads");
        let auth = &c.management.auth;
        assert_eq!(
            auth.keys.keys().collect::<Vec<_>>(),
            ["AKIAEXAMPLEENV01"],
            "the ID a request is signed with"
        );
        assert_eq!(auth.keys["AKIAEXAMPLEENV01"].secret, "s3cret-from-env");
        assert_eq!(auth.clock_skew, Duration::from_secs(60));
        Ok(())
    });
}

// figment's Jail closure must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
#[test]
fn groups_is_a_switch_or_a_table() {
    let switch = checked("[extensions]\ngroups = true").unwrap();
    assert!(switch.extensions.groups.enabled);
    assert_eq!(switch.extensions.groups.presence, Presence::Off);
    assert!(
        !checked("[extensions]\ngroups = false")
            .unwrap()
            .extensions
            .groups
            .enabled
    );
    let table = checked(
        "[extensions.groups]\nenabled = true\npresence = \"route\"\npresence_route = \"who\"",
    )
    .unwrap();
    assert_eq!(table.extensions.groups.presence, Presence::Route);
    assert_eq!(table.extensions.groups.presence_route, "who");
    let frames = checked("[extensions.groups]\nenabled = true\npresence = \"frames\"").unwrap();
    assert_eq!(frames.extensions.groups.presence_route, "$presence");
    for (toml, field) in [
        (
            "[extensions.groups]\npresence = \"frames\"",
            "extensions.groups.presence",
        ),
        (
            "[extensions.groups]\nenabled = true\npresence_route = \"\"",
            "extensions.groups.presence_route",
        ),
        ("[store]\ngroup_shards = 0", "store.group_shards"),
        ("[store]\ngroup_shards = 257", "store.group_shards"),
    ] {
        let err = checked(toml).unwrap_err().to_string();
        assert!(err.contains(field), "{err} should name {field}");
    }
    for bad in [
        "[extensions.groups]\npresence = \"loud\"",
        "[extensions.groups]\nenabeld = true",
        "[extensions]\ngroups = \"yes\"",
    ] {
        assert!(Config::from_toml(bad).is_err(), "{bad}");
    }
    assert_eq!(
        checked("[store]\ngroup_shards = 1")
            .unwrap()
            .store
            .group_shards,
        1
    );
    figment::Jail::expect_with(|jail| {
        jail.set_env("CONNECTION_HOST_EXTENSIONS__GROUPS", "true");
        let c = Config::load(None, &Overrides::default()).expect("loads");
        assert!(c.extensions.groups.enabled);
        jail.set_env("CONNECTION_HOST_EXTENSIONS__GROUPS", "");
        jail.set_env("CONNECTION_HOST_EXTENSIONS__GROUPS__ENABLED", "true");
        jail.set_env("CONNECTION_HOST_EXTENSIONS__GROUPS__PRESENCE", "frames");
        let c = Config::load(None, &Overrides::default()).expect("loads");
        assert!(c.extensions.groups.enabled);
        assert_eq!(c.extensions.groups.presence, Presence::Frames);
        Ok(())
    });
}

#[allow(clippy::result_large_err)]
#[test]
fn file_then_environment_then_flags() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "host.toml",
            "[server]\nlisten = \"127.0.0.1:9000\"\n[api]\nstage = \"file\"\n[limits]\nidle_timeout = \"5m\"\nmissed_pongs = 3\n",
        )?;
        jail.set_env("CONNECTION_HOST_LIMITS__IDLE_TIMEOUT", "7m");
        jail.set_env("CONNECTION_HOST_API__STAGE", "env");
        jail.set_env("CONNECTION_HOST_CLUSTER__SECRET", "from-the-environment");
        // What infra/self-hosted.yaml sets to turn the EMF lines on.
        jail.set_env("CONNECTION_HOST_METRICS__EMF", "true");
        jail.set_env("CONNECTION_HOST_METRICS__EMF_INTERVAL", "10s");
        // The command line's own variable is not a configuration field.
        jail.set_env("CONNECTION_HOST_CONFIG", "host.toml");
        let flags = Overrides {
            stage: Some("flag".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(Path::new("host.toml")), &flags).expect("loads");
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.limits.missed_pongs, 3);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(420));
        assert_eq!(c.api.stage, "flag");
        assert_eq!(c.cluster.secret, "from-the-environment");
        assert!(c.metrics.emf);
        assert_eq!(c.metrics.emf_interval, Duration::from_secs(10));
        assert_eq!(c.metrics.emf_namespace, "ConnectionHost");
        assert!(!format!("{c:?}").contains("from-the-environment"));
        jail.set_env("CONNECTION_HOST_LIMITS__MISSED_PONGS", "many");
        let err = Config::load(Some(Path::new("host.toml")), &flags).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("missed_pongs"),
            "{err}"
        );
        // --template names the template; --stage wins over the template's stage and the
        // file's routes are refused.
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat-template.yaml"
        );
        jail.set_env("CONNECTION_HOST_LIMITS__MISSED_PONGS", "3");
        jail.create_file(
            "functions.toml",
            "[template.functions]\nChatFunction = \"chat\"\n[functions.chat]\ncommand = \"chat\"\n",
        )?;
        let templated = Overrides {
            template: Some(fixture.into()),
            ..flags.clone()
        };
        let c = Config::load(Some(Path::new("functions.toml")), &templated).expect("loads");
        assert_eq!(c.api.stage, "flag");
        assert_eq!(c.template.file.as_deref(), Some(Path::new(fixture)));
        // What the template will refuse to replace (template::apply reads it): --stage
        // chose the stage, the environment set api.stage too, the file set no route.
        assert!(c.provenance.stage_flag);
        assert!(c.provenance.gave("api.stage"));
        assert!(!c.provenance.gave("routes"));
        let unstaged = Overrides {
            stage: None,
            ..templated.clone()
        };
        let c = Config::load(Some(Path::new("functions.toml")), &unstaged).expect("loads");
        assert!(!c.provenance.stage_flag);
        jail.create_file(
            "routes.toml",
            "[routes.\"$default\"]\nintegration = \"m\"\n[integrations.m]\ntype = \"mock\"\n",
        )?;
        let c = Config::load(Some(Path::new("routes.toml")), &templated).expect("loads");
        assert!(c.provenance.gave("routes"));
        let missing = Config::load(Some(Path::new("nope.toml")), &flags).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        Ok(())
    });
}

#[test]
fn groups_take_a_switch_or_a_table_of_settings() {
    let on = Config::from_toml("[extensions]\ngroups = true").unwrap();
    assert!(on.extensions.groups.enabled);
    assert_eq!(on.extensions.groups.remote_concurrency, 8);
    let table = Config::from_toml(
        "[extensions.groups]\nenabled = true\nremote_concurrency = 10\nfanout_rate = 0",
    )
    .unwrap();
    assert!(table.extensions.groups.enabled);
    assert_eq!(table.extensions.groups.remote_concurrency, 10);
    assert_eq!(table.extensions.groups.fanout_rate, 0);
    let wrong = Config::from_toml("[extensions.groups]\nenabled = true\npage = 10").unwrap_err();
    assert!(wrong.to_string().contains("page"), "{wrong}");
    let too_big = Config::from_toml("[extensions.groups]\nremote_concurrency = 5000")
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        too_big
            .to_string()
            .contains("extensions.groups.remote_concurrency"),
        "{too_big}"
    );
}
