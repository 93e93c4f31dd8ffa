use super::*;
use crate::config::FunctionConfig;

const FIXTURE: &str = include_str!("../../tests/fixtures/chat-template.yaml");
/// The template that deploys the chat to API Gateway.
const MANAGED: &str = include_str!("../../../infra/managed.yaml");

/// The Lambda authorizer a template's REQUEST authorizer becomes.
fn request(authorizer: &AuthorizerConfig) -> &RequestAuthorizerConfig {
    match authorizer {
        AuthorizerConfig::Request(r) => r,
        AuthorizerConfig::Jwt(_) => panic!("a template authorizer is a Lambda REQUEST authorizer"),
    }
}

fn config_with_functions(names: &[&str]) -> Config {
    let mut config = Config::default();
    for name in names {
        config.functions.insert(
            (*name).to_string(),
            FunctionConfig {
                command: format!("/bin/{name}"),
                ..FunctionConfig::default()
            },
        );
    }
    config
}

fn load(text: &str, config: &Config) -> Result<ApiDefinition, TemplateError> {
    ApiDefinition::from_text(text, Path::new("t.yaml"), config)
}

fn lambda_name(integration: &IntegrationConfig) -> &str {
    match integration {
        IntegrationConfig::Lambda { function_name, .. } => function_name,
        other => panic!("not a Lambda integration: {other:?}"),
    }
}

#[test]
fn the_chat_fixture_maps_to_routes_an_authorizer_and_local_functions() {
    let mut config = config_with_functions(&["chat", "authorizer"]);
    config
        .template
        .functions
        .insert("ChatFunction".into(), "chat".into());
    config
        .template
        .functions
        .insert("AuthorizerFunction".into(), "authorizer".into());
    let d = load(FIXTURE, &config).unwrap();
    assert_eq!(d.api, "ChatApi");
    assert_eq!(
        d.route_selection_expression.to_string(),
        "$request.body.action"
    );
    assert_eq!(d.stages, ["dev"]);
    assert_eq!(
        d.routes.keys().collect::<Vec<_>>(),
        ["$connect", "$default", "$disconnect"]
    );
    for route in d.routes.values() {
        assert_eq!(route.integration, "ChatIntegration");
        assert!(!route.two_way);
        // !If on the StageName parameter's default (dev): 10 s.
        assert_eq!(route.timeout, Duration::from_secs(10));
    }
    assert_eq!(
        d.routes["$connect"].authorizer.as_deref(),
        Some("GuestAuthorizer")
    );
    assert_eq!(d.routes["$default"].authorizer, None);
    assert_eq!(lambda_name(&d.integrations["ChatIntegration"]), "chat");
    let authorizer = request(&d.authorizers["GuestAuthorizer"]);
    assert_eq!(authorizer.function_name, "authorizer");
    assert_eq!(
        authorizer.identity_sources,
        [IdentitySource::QueryString("nickname".into())]
    );
    assert!(d.functions.values().all(|f| f.local), "{:?}", d.functions);
    let summary = d.summary().join("\n");
    assert!(
        summary.contains("route $connect -> ChatIntegration, authorizer GuestAuthorizer"),
        "{summary}"
    );
    assert!(
        summary.contains("function ChatFunction -> local function chat"),
        "{summary}"
    );
}

#[test]
fn the_managed_template_from_infra_loads() {
    let mut config = config_with_functions(&["chat", "authorizer", "echo"]);
    for (id, name) in [
        ("ChatFunction", "chat"),
        ("AuthorizerFunction", "authorizer"),
        ("EchoFunction", "echo"),
    ] {
        config.template.functions.insert(id.into(), name.into());
    }
    let d = load(MANAGED, &config).unwrap();
    assert_eq!(d.api, "WebSocketApi");
    assert_eq!(d.stages, ["dev"]);
    assert_eq!(
        d.routes.keys().collect::<Vec<_>>(),
        ["$connect", "$default", "$disconnect", "echo"]
    );
    assert!(d.routes["echo"].two_way);
    assert_eq!(d.routes["echo"].integration, "EchoIntegration");
    assert!(!d.routes["$default"].two_way);
    assert_eq!(
        d.routes["$connect"].authorizer.as_deref(),
        Some("GuestAuthorizer")
    );
    assert_eq!(d.routes["$default"].timeout, Duration::from_secs(29));
    assert_eq!(lambda_name(&d.integrations["EchoIntegration"]), "echo");
    assert_eq!(
        request(&d.authorizers["GuestAuthorizer"]).identity_sources,
        [IdentitySource::QueryString("nickname".into())]
    );
    assert!(d.functions.values().all(|f| f.local), "{:?}", d.functions);
    // Globals.Function's Timeout and MemorySize, and each function's variables: literals and
    // parameters carried, a deployed table's name not, JWT_SECRET removed by AWS::NoValue.
    let chat = &d.function_settings["chat"];
    assert_eq!(chat.timeout, Some(Duration::from_secs(10)));
    assert_eq!(chat.memory_size, Some(128));
    assert_eq!(
        chat.environment,
        BTreeMap::from([
            ("ROOMS_BACKEND".to_string(), "dynamodb".to_string()),
            ("ROOMS_TTL_SECONDS".to_string(), "7200".to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ])
    );
    assert_eq!(chat.unresolved, ["ROOMS_TABLE"]);
    let authorizer = &d.function_settings["authorizer"];
    assert_eq!(
        authorizer.environment.keys().collect::<Vec<_>>(),
        ["ALLOW_GUEST_NICKNAMES", "RUST_LOG"]
    );
    assert!(d.summary().join("\n").contains("ROOMS_TABLE"));
    // The stage's DefaultRouteSettings, from the ThrottlingRateLimit and ThrottlingBurstLimit
    // parameters' defaults.
    assert_eq!(
        d.stage_settings["dev"],
        StageSettings {
            default_route_settings: RouteSettings {
                throttling_rate_limit: Some(500.0),
                throttling_burst_limit: Some(1000),
            },
            route_settings: BTreeMap::new(),
        }
    );
    assert!(
        d.summary()
            .join("\n")
            .contains("stage dev throttling: default rate 500/s, burst 1000"),
        "{:?}",
        d.summary()
    );

    // Without a mapping, each function goes to the Invoke API under its FunctionName
    // (`${AWS::StackName}-chat`), as deployed by a stack of that name.
    let mut config = Config::default();
    config.template.stack_name = "chat-prod".into();
    let d = load(MANAGED, &config).unwrap();
    assert_eq!(
        lambda_name(&d.integrations["ChatIntegration"]),
        "chat-prod-chat"
    );
    assert_eq!(
        request(&d.authorizers["GuestAuthorizer"]).function_name,
        "chat-prod-authorizer"
    );
}

#[test]
fn functions_map_by_table_logical_id_function_name_else_the_invoke_api() {
    // No [template.functions]: ChatFunction has no FunctionName, so without a [functions] entry
    // of that logical ID it goes to the Invoke API under its logical ID; AuthorizerFunction's
    // FunctionName is `${AWS::StackName}-authorizer`.
    let mut config = Config::default();
    config.template.stack_name = "demo".into();
    let d = load(FIXTURE, &config).unwrap();
    assert_eq!(
        d.functions["ChatFunction"],
        FunctionTarget {
            function_name: "ChatFunction".into(),
            local: false,
            region: String::new()
        }
    );
    assert_eq!(
        d.functions["AuthorizerFunction"].function_name,
        "demo-authorizer"
    );
    assert!(!d.functions["AuthorizerFunction"].local);

    let config = config_with_functions(&["ChatFunction", "connection-host-authorizer"]);
    let d = load(FIXTURE, &config).unwrap();
    assert!(d.functions["ChatFunction"].local, "by logical ID");
    assert_eq!(
        d.functions["AuthorizerFunction"],
        FunctionTarget {
            function_name: "connection-host-authorizer".into(),
            local: true,
            region: String::new()
        },
        "by FunctionName (AWS::StackName defaults to connection-host)"
    );

    // The table wins, and may name a deployed function rather than a local one.
    let mut config = config_with_functions(&["ChatFunction"]);
    config.template.functions.insert(
        "ChatFunction".into(),
        "arn:aws:lambda:eu-west-1:123456789012:function:chat-prod".into(),
    );
    let d = load(FIXTURE, &config).unwrap();
    let chat = &d.functions["ChatFunction"];
    assert!(!chat.local);
    assert_eq!(chat.region, "eu-west-1");
    assert!(matches!(
        &d.integrations["ChatIntegration"],
        IntegrationConfig::Lambda { function_name, region, .. }
            if function_name.ends_with(":chat-prod") && region == "eu-west-1"
    ));

    let mut config = Config::default();
    config
        .template
        .functions
        .insert("ChatFunctoin".into(), "chat".into());
    let e = load(FIXTURE, &config).unwrap_err().to_string();
    assert!(e.contains("template.functions.ChatFunctoin"), "{e}");
    assert!(e.contains("AuthorizerFunction, ChatFunction"), "{e}");
}

#[test]
fn parameters_take_overrides_and_the_stage_follows() {
    let mut config = config_with_functions(&["ChatFunction", "AuthorizerFunction"]);
    config
        .template
        .parameters
        .insert("StageName".into(), "prod".into());
    let d = load(FIXTURE, &config).unwrap();
    assert_eq!(d.stages, ["prod"]);
    assert_eq!(d.routes["$default"].timeout, Duration::from_secs(29));
    config.template.parameters.insert("Nope".into(), "x".into());
    let e = load(FIXTURE, &config).unwrap_err().to_string();
    assert!(e.starts_with("template.parameters.Nope:"), "{e}");
}

/// A minimal API with one `$default` route; `extra` adds resources (indented two spaces).
fn api(route_extra: &str, extra: &str) -> String {
    format!(
        r#"
Parameters:
  Stage:
    Type: String
Resources:
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties:
      ProtocolType: WEBSOCKET
      RouteSelectionExpression: ${{request.body.service}}/${{request.body.action}}
  Route:
    Type: AWS::ApiGatewayV2::Route
    Properties:
      ApiId: !Ref Api
      RouteKey: $default
      Target: !Sub integrations/${{Echo}}
{route_extra}
  Echo:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: MOCK
      TimeoutInMillis: 500
      RequestTemplates:
        $default: '{{"statusCode": 200}}'
      TemplateSelectionExpression: \$default
{extra}
"#
    )
}

#[test]
fn two_way_routes_need_the_expression_and_a_default_route_response() {
    let response = "  Response:\n    Type: AWS::ApiGatewayV2::RouteResponse\n    Properties:\n      ApiId: !Ref Api\n      RouteId: !Ref Route\n      RouteResponseKey: $default\n";
    let expression = "      RouteResponseSelectionExpression: $default";
    let config = Config::default();
    let d = load(&api(expression, response), &config).unwrap();
    assert!(d.routes["$default"].two_way);
    assert_eq!(d.routes["$default"].timeout, Duration::from_millis(500));
    assert!(d.stages.is_empty());
    assert_eq!(
        d.route_selection_expression.to_string(),
        "${request.body.service}/${request.body.action}"
    );
    // Either half alone leaves the route one-way, as on API Gateway.
    assert!(!load(&api(expression, ""), &config).unwrap().routes["$default"].two_way);
    assert!(!load(&api("", response), &config).unwrap().routes["$default"].two_way);
}

#[test]
fn mock_and_http_proxy_integrations() {
    let integration_response = r#"  EchoResponse:
    Type: AWS::ApiGatewayV2::IntegrationResponse
    Properties:
      ApiId: !Ref Api
      IntegrationId: !Ref Echo
      IntegrationResponseKey: $default
      ResponseTemplates:
        $default: '{"echo": $input.body}'
  Proxy:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: HTTP_PROXY
      IntegrationMethod: PUT
      IntegrationUri: !Sub https://backend.example.com/${Stage}/messages
      RequestParameters:
        integration.request.header.connectionId: context.connectionId
  Teapot:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: MOCK
      RequestTemplates:
        application/json: '{"statusCode": 418}'
"#;
    let mut config = Config::default();
    config
        .template
        .parameters
        .insert("Stage".into(), "beta".into());
    let d = load(&api("", integration_response), &config).unwrap();
    assert_eq!(
        d.integrations["Echo"],
        IntegrationConfig::Mock {
            status_code: 200,
            response_template: r#"{"echo": $input.body}"#.into()
        }
    );
    assert_eq!(
        d.integrations["Proxy"],
        IntegrationConfig::HttpProxy {
            url: "https://backend.example.com/beta/messages".into(),
            method: "PUT".into(),
            request_parameters: [(
                "integration.request.header.connectionId".to_string(),
                "context.connectionId".to_string()
            )]
            .into()
        }
    );
    assert!(matches!(
        d.integrations["Teapot"],
        IntegrationConfig::Mock {
            status_code: 418,
            ..
        }
    ));
}

#[test]
fn literal_function_arns_and_header_identity_sources() {
    let extra = r#"  Fn:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: AWS_PROXY
      IntegrationUri: arn:aws:apigateway:eu-west-1:lambda:path/2015-03-31/functions/arn:aws:lambda:eu-west-1:123456789012:function:existing/invocations
  Auth:
    Type: AWS::ApiGatewayV2::Authorizer
    Properties:
      ApiId: !Ref Api
      AuthorizerType: REQUEST
      AuthorizerUri: !Sub arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/arn:aws:lambda:${AWS::Region}:${AWS::AccountId}:function:auth/invocations
      IdentitySource: [route.request.header.Auth, route.request.querystring.token]
"#;
    let config = config_with_functions(&["auth"]);
    let d = load(&api("", extra), &config).unwrap();
    assert_eq!(
        d.integrations["Fn"],
        IntegrationConfig::Lambda {
            function_name: "arn:aws:lambda:eu-west-1:123456789012:function:existing".into(),
            endpoint_url: String::new(),
            region: "eu-west-1".into()
        }
    );
    let auth = request(&d.authorizers["Auth"]);
    assert_eq!(
        auth.function_name, "auth",
        "the local function of that name"
    );
    assert_eq!(
        auth.identity_sources,
        [
            IdentitySource::Header("Auth".into()),
            IdentitySource::QueryString("token".into())
        ]
    );
}

#[test]
fn a_function_name_is_only_evaluated_when_it_decides_the_target() {
    let extra = r#"  Fn:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: AWS_PROXY
      IntegrationUri: !Sub arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${Handler.Arn}/invocations
  Handler:
    Type: AWS::Lambda::Function
    Properties:
      FunctionName: !ImportValue SharedName
"#;
    let text = api("", extra);
    let e = load(&text, &Config::default()).unwrap_err().to_string();
    assert!(
        e.contains("Resources.Handler.Properties.FunctionName (Fn::ImportValue)"),
        "{e}"
    );
    let mut config = config_with_functions(&["handler"]);
    config
        .template
        .functions
        .insert("Handler".into(), "handler".into());
    let d = load(&text, &config).unwrap();
    assert_eq!(lambda_name(&d.integrations["Fn"]), "handler");
}

#[test]
fn json_templates_load_too() {
    let json = r#"{
  "Resources": {
    "Api": {"Type": "AWS::ApiGatewayV2::Api", "Properties": {"ProtocolType": "WEBSOCKET", "RouteSelectionExpression": "$request.body.action"}},
    "Echo": {"Type": "AWS::ApiGatewayV2::Integration", "Properties": {"ApiId": {"Ref": "Api"}, "IntegrationType": "MOCK"}},
    "Route": {"Type": "AWS::ApiGatewayV2::Route", "Properties": {"ApiId": {"Ref": "Api"}, "RouteKey": "ping",
      "Target": {"Fn::Join": ["/", ["integrations", {"Ref": "Echo"}]]}}},
    "Stage": {"Type": "AWS::ApiGatewayV2::Stage", "Properties": {"ApiId": {"Ref": "Api"}, "StageName": "v1"}}
  }
}"#;
    let d = load(json, &Config::default()).unwrap();
    assert_eq!(d.routes["ping"].integration, "Echo");
    assert_eq!(d.stages, ["v1"]);
}

#[test]
fn resources_whose_condition_is_false_are_left_out() {
    let extra = "  Extra:\n    Type: AWS::ApiGatewayV2::Route\n    Condition: Never\n    Properties:\n      ApiId: !Ref Api\n      RouteKey: extra\n      Target: !Sub integrations/${Echo}\n";
    let text = format!("Conditions:\n  Never: !Equals [a, b]\n{}", api("", extra));
    let d = load(&text, &Config::default()).unwrap();
    assert_eq!(d.routes.keys().collect::<Vec<_>>(), ["$default"]);
}

#[test]
fn errors_name_the_resource_and_property() {
    let mut config = Config::default();
    config
        .template
        .parameters
        .insert("Stage".into(), "dev".into());
    let route = |extra: &str| api(extra, "");
    let integration = |props: &str| {
        api(
            "",
            &format!(
                "  Bad:\n    Type: AWS::ApiGatewayV2::Integration\n    Properties:\n      ApiId: !Ref Api\n{props}"
            ),
        )
    };
    let cases = [
        (
            api("", "").replace("!Sub integrations/${Echo}", "integrations/abc123"),
            "Resources.Route.Properties.Target: must be integrations/",
        ),
        (
            api("", "").replace("!Sub integrations/${Echo}", "!Sub integrations/${Api}"),
            "Api is not an AWS::ApiGatewayV2::Integration",
        ),
        (
            api("", "").replace("${Echo}", "${Missing}"),
            "Resources.Route.Properties.Target (Fn::Sub): no parameter or resource named Missing",
        ),
        (
            route("      AuthorizationType: AWS_IAM"),
            "Resources.Route.Properties.AuthorizationType: AWS_IAM is not supported",
        ),
        (
            route("      AuthorizationType: CUSTOM\n      AuthorizerId: !Ref Echo"),
            "only the $connect route can have an authorizer",
        ),
        (
            route("      RouteResponseSelectionExpression: $request.body.x"),
            "RouteResponseSelectionExpression: must be $default",
        ),
        (
            route("      ApiKeyRequired: true"),
            "Resources.Route.Properties.ApiKeyRequired",
        ),
        (
            integration("      IntegrationType: HTTP\n      IntegrationUri: https://x"),
            "Resources.Bad.Properties.IntegrationType: HTTP (non-proxy",
        ),
        (
            integration("      IntegrationType: MOCK\n      TimeoutInMillis: 30000"),
            "Resources.Bad.Properties.TimeoutInMillis: must be from 50 to 29000",
        ),
        (
            integration("      IntegrationType: AWS_PROXY\n      IntegrationUri: !GetAtt Echo.Arn"),
            "Resources.Bad.Properties.IntegrationUri: refers to Echo (AWS::ApiGatewayV2::Integration)",
        ),
        (
            integration(
                "      IntegrationType: AWS_PROXY\n      IntegrationUri: arn:aws:sqs:us-east-1:1:queue",
            ),
            "is not a Lambda function ARN",
        ),
        (
            integration(
                "      IntegrationType: HTTP_PROXY\n      IntegrationUri: !Sub 'http://${Echo}/x'",
            ),
            "Resources.Bad.Properties.IntegrationUri: must be a string without resource references",
        ),
        (
            integration(
                "      IntegrationType: AWS_PROXY\n      IntegrationUri: !ImportValue Shared",
            ),
            "Fn::ImportValue is not supported",
        ),
        (
            api(
                "",
                "  Auth:\n    Type: AWS::ApiGatewayV2::Authorizer\n    Properties:\n      ApiId: !Ref Api\n      AuthorizerType: JWT\n",
            ),
            "Resources.Auth.Properties.AuthorizerType: JWT",
        ),
        (
            api(
                "",
                "  Auth:\n    Type: AWS::ApiGatewayV2::Authorizer\n    Properties:\n      ApiId: !Ref Api\n      AuthorizerType: REQUEST\n      AuthorizerUri: arn:aws:lambda:us-east-1:1:function:f\n      IdentitySource: [header.Auth]\n",
            ),
            "Resources.Auth.Properties.IdentitySource: invalid identity source",
        ),
        (
            api("", "").replace("ProtocolType: WEBSOCKET", "ProtocolType: HTTP"),
            "no AWS::ApiGatewayV2::Api with ProtocolType WEBSOCKET",
        ),
        (
            api("", "").replace(
                "${request.body.service}/${request.body.action}",
                "${request.body",
            ),
            "Resources.Api.Properties.RouteSelectionExpression",
        ),
        (
            api("", "").replace("      ApiId: !Ref Api\n      RouteKey", "      RouteKey"),
            "Resources.Route.Properties.ApiId: is required",
        ),
        (
            api(
                "",
                "  Twin:\n    Type: AWS::ApiGatewayV2::Route\n    Properties:\n      ApiId: !Ref Api\n      RouteKey: $default\n      Target: !Sub integrations/${Echo}\n",
            ),
            "route key $default is defined twice",
        ),
        (
            api(
                "",
                "  Other:\n    Type: AWS::ApiGatewayV2::Api\n    Properties:\n      ProtocolType: WEBSOCKET\n      RouteSelectionExpression: x\n",
            ),
            "several WebSocket APIs (Api, Other): choose one with template.api",
        ),
        (
            "Resources: {}".to_string(),
            "a template needs a Resources section",
        ),
        (
            "Resources:\n  R: !Reff x\n".to_string(),
            "unknown tag !Reff",
        ),
    ];
    for (text, expected) in cases {
        let e = load(&text, &config).unwrap_err().to_string();
        assert!(e.starts_with("template t.yaml: "), "{e}");
        assert!(e.contains(expected), "expected {expected:?} in: {e}");
    }
    // Without the parameter's value: the parameter has no Default.
    let e = load(
        &api("", "").replace("integrations/${Echo}", "integrations/${Echo}${Stage}"),
        &Config::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("parameter Stage has no Default"), "{e}");
    let missing = ApiDefinition::load(Path::new("/nonexistent/t.yaml"), &config).unwrap_err();
    assert!(matches!(missing, TemplateError::Read { .. }), "{missing}");
}

#[test]
fn function_settings_merge_globals_under_the_functions_own() {
    let template = r#"
Globals:
  Function:
    Timeout: 20
    MemorySize: 512
    Environment:
      Variables: { SHARED: from-globals, LEVEL: globals }
Resources:
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: { ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.action }
  Integration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: AWS_PROXY
      IntegrationUri: !GetAtt Sam.Arn
  Other:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: AWS_PROXY
      IntegrationUri: !GetAtt Plain.Arn
  Route:
    Type: AWS::ApiGatewayV2::Route
    Properties: { ApiId: !Ref Api, RouteKey: $default, Target: !Sub "integrations/${Integration}" }
  OtherRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: { ApiId: !Ref Api, RouteKey: other, Target: !Sub "integrations/${Other}" }
  Sam:
    Type: AWS::Serverless::Function
    Properties:
      Timeout: 5
      Environment:
        Variables: { LEVEL: function }
  Plain:
    Type: AWS::Lambda::Function
    Properties:
      MemorySize: 256
"#;
    let d = load(template, &config_with_functions(&["Sam", "Plain"])).unwrap();
    let sam = &d.function_settings["Sam"];
    assert_eq!(
        sam.timeout,
        Some(Duration::from_secs(5)),
        "the function's own"
    );
    assert_eq!(sam.memory_size, Some(512), "Globals'");
    assert_eq!(sam.environment["LEVEL"], "function");
    assert_eq!(sam.environment["SHARED"], "from-globals");
    // Globals are SAM's: a plain AWS::Lambda::Function does not take them.
    let plain = &d.function_settings["Plain"];
    assert_eq!(plain.timeout, None);
    assert_eq!(plain.memory_size, Some(256));
    assert!(plain.environment.is_empty());
    // A function the host does not run itself has nothing to carry.
    assert!(
        load(template, &Config::default())
            .unwrap()
            .function_settings
            .is_empty()
    );
    let err = load(
        &template.replace("Timeout: 5", "Timeout: 901"),
        &config_with_functions(&["Sam", "Plain"]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Resources.Sam.Properties.Timeout"), "{err}");
}

/// Two stages of the [`api`] template: `dev` with `dev_settings` (properties, indented six spaces),
/// `prod` with none.
fn staged(dev_settings: &str) -> String {
    api(
        "",
        &format!(
            "  Dev:\n    Type: AWS::ApiGatewayV2::Stage\n    Properties:\n      ApiId: !Ref Api\n      StageName: dev\n{dev_settings}\n  Prod:\n    Type: AWS::ApiGatewayV2::Stage\n    Properties:\n      ApiId: !Ref Api\n      StageName: prod\n"
        ),
    )
}

/// Applies `template` (written to a file, as `[template] file` names one) to `config`.
fn apply_text(template: &str, mut config: Config) -> Result<Config, TemplateError> {
    let file = std::env::temp_dir().join(format!(
        "stage-throttling-{}-{:?}.yaml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, template).unwrap();
    config.template.file = Some(file.clone());
    let applied = apply(config);
    std::fs::remove_file(&file).unwrap();
    applied.map(|(config, _)| config)
}

#[test]
fn stage_throttling_is_read_and_applied_with_the_stage_served() {
    let settings = r#"      DefaultRouteSettings:
        ThrottlingRateLimit: 0.5
        ThrottlingBurstLimit: !Ref Burst
        LoggingLevel: INFO
      RouteSettings:
        $default:
          ThrottlingRateLimit: "10"
          DetailedMetricsEnabled: true"#;
    let template = staged(settings).replace(
        "Parameters:\n",
        "Parameters:\n  Burst:\n    Type: Number\n    Default: 3\n",
    );
    let mut config = Config::default();
    config
        .template
        .parameters
        .insert("Stage".into(), "dev".into());
    let d = load(&template, &config).unwrap();
    assert_eq!(d.stages, ["dev", "prod"]);
    let dev = &d.stage_settings["dev"];
    assert_eq!(
        dev.default_route_settings,
        RouteSettings {
            throttling_rate_limit: Some(0.5),
            throttling_burst_limit: Some(3),
        }
    );
    assert_eq!(
        dev.route_settings["$default"],
        RouteSettings {
            throttling_rate_limit: Some(10.0),
            throttling_burst_limit: None,
        }
    );
    assert!(!d.stage_settings.contains_key("prod"), "prod sets nothing");
    assert!(
        d.summary()
            .join("\n")
            .contains("stage dev throttling: default rate 0.5/s, burst 3; route $default rate 10/s, burst default"),
        "{:?}",
        d.summary()
    );

    // Serving dev: the stage default and the route's own rate are in the configuration, and
    // the route's effective burst is the stage's.
    config.api.stage = "dev".into();
    config.provenance.stage_flag = true;
    let applied = apply_text(&template, config.clone()).unwrap();
    let default = applied.api.default_route_settings;
    assert_eq!(default, dev.default_route_settings);
    let route = &applied.routes["$default"];
    assert_eq!(route.throttling_rate_limit, Some(10.0));
    assert_eq!(
        route.settings(default),
        RouteSettings {
            throttling_rate_limit: Some(10.0),
            throttling_burst_limit: Some(3),
        }
    );
    // Serving prod: nothing is throttled, and the configuration's own default stays.
    config.api.stage = "prod".into();
    config.api.default_route_settings.throttling_rate_limit = Some(7.0);
    let applied = apply_text(&template, config.clone()).unwrap();
    assert_eq!(
        applied.api.default_route_settings.throttling_rate_limit,
        Some(7.0)
    );
    assert_eq!(applied.routes["$default"].throttling_rate_limit, None);
    // A configuration that sets the default while the served stage does is refused.
    config.api.stage = "dev".into();
    config
        .provenance
        .given
        .push("api.default_route_settings".into());
    let e = apply_text(&template, config.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("api.default_route_settings: the template") && e.contains("stage dev"),
        "{e}"
    );
    // ... but not while the served stage sets none.
    config.api.stage = "prod".into();
    apply_text(&template, config).unwrap();
}

#[test]
fn stage_throttling_errors_name_the_property() {
    let config = Config::default();
    for (settings, expected) in [
        (
            "      RouteSettings:\n        chat: { ThrottlingRateLimit: 1 }",
            "Resources.Dev.Properties.RouteSettings.chat: names no route of the API",
        ),
        (
            "      RouteSettings: '{}'",
            "Resources.Dev.Properties.RouteSettings: must be a mapping",
        ),
        (
            "      DefaultRouteSettings: { ThrottlingRateLimit: -1 }",
            "Resources.Dev.Properties.DefaultRouteSettings.ThrottlingRateLimit: must be a number",
        ),
        (
            "      DefaultRouteSettings: { ThrottlingRateLimit: fast }",
            "DefaultRouteSettings.ThrottlingRateLimit: must be a number",
        ),
        (
            "      DefaultRouteSettings: { ThrottlingBurstLimit: 1.5 }",
            "Resources.Dev.Properties.DefaultRouteSettings.ThrottlingBurstLimit: must be a whole number",
        ),
        (
            "      DefaultRouteSettings: { ThrottlingBurstLimit: !Ref Api }",
            "DefaultRouteSettings.ThrottlingBurstLimit: must be a number without resource references",
        ),
        (
            "      DefaultRouteSettings: 5",
            "Resources.Dev.Properties.DefaultRouteSettings: must be a mapping",
        ),
        (
            "      RouteSettings:\n        $default: { ThrottlingBurstLimit: -2 }",
            "RouteSettings.$default.ThrottlingBurstLimit: must be a whole number",
        ),
    ] {
        let e = load(&staged(settings), &config).unwrap_err().to_string();
        assert!(e.contains(expected), "{e}\nshould contain {expected}");
    }
    // Zero is a limit (API Gateway throttles every request), not an error.
    let d = load(
        &staged("      DefaultRouteSettings: { ThrottlingRateLimit: 0, ThrottlingBurstLimit: 0 }"),
        &config,
    )
    .unwrap();
    assert_eq!(
        d.stage_settings["dev"]
            .default_route_settings
            .throttling_burst_limit,
        Some(0)
    );
}
