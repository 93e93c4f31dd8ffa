//! The API definition read from a CloudFormation/SAM template (`--template`, `[template]`), so one
//! file describes the API for local runs, CI and AWS.
//!
//! The template supplies what API Gateway's resources describe: the route selection expression
//! (`AWS::ApiGatewayV2::Api`), routes and their authorization (`::Route`), two-way routes
//! (`RouteResponseSelectionExpression: $default` with a `$default` `::RouteResponse`), integrations
//! and their timeouts (`::Integration`, with `::IntegrationResponse` templates for `MOCK`),
//! `REQUEST` authorizers (`::Authorizer`) and the stage with its throttling (`::Stage`:
//! `DefaultRouteSettings` and `RouteSettings`). The configuration file keeps
//! everything else: listeners, limits, the store, and the `[functions]` the host runs itself.
//!
//! A Lambda function the API invokes (an `IntegrationUri` or `AuthorizerUri` naming an
//! `AWS::Serverless::Function` or `AWS::Lambda::Function`, or a literal function ARN) is reached,
//! first rule that applies:
//! 1. `[template.functions]` maps its logical ID (or, for a literal ARN, its function name) to a
//!    function name: a `[functions]` entry runs locally, anything else is a Lambda function name or
//!    ARN for the Invoke API;
//! 2. `[functions]` declares its logical ID: that local function;
//! 3. its literal `FunctionName` is declared in `[functions]`: that local function;
//! 4. otherwise the Lambda Invoke API (AWS, LocalStack: the standard AWS configuration) with its
//!    `FunctionName`, else its ARN, else its logical ID (CloudFormation names a function without
//!    `FunctionName` `stack-LogicalId-RANDOM`, so such a function needs rule 1 to reach AWS).

mod document;
mod resolve;

use crate::authorizer::IdentitySource;
use crate::config::{
    AuthorizerConfig, Config, IntegrationConfig, RequestAuthorizerConfig, RouteConfig,
    RouteSettings,
};
use crate::routing::RouteSelectionExpression;
use resolve::{Piece, Scope, Text, Val};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Resource types of Lambda functions an integration or authorizer can name.
const FUNCTION_TYPES: &[&str] = &["AWS::Serverless::Function", "AWS::Lambda::Function"];

/// A template that cannot be used, naming the file and, where there is one, the place in it.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The file could not be read.
    #[error("template {}: {source}", path.display())]
    Read {
        /// The template file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The template is not valid, or describes something the host cannot serve.
    #[error("template {}: {}{reason}", path.display(), if location.is_empty() { String::new() } else { format!("{location}: ") })]
    Invalid {
        /// The template file.
        path: PathBuf,
        /// Where in the template, e.g. `Resources.ChatRoute.Properties.Target`; empty for the
        /// whole file.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A `[template]` setting does not fit the template.
    #[error("{field}: {reason}")]
    Setting {
        /// Dotted path of the configuration field, e.g. `template.functions.Chat`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A problem at a place in the template, before the file name is attached.
#[derive(Debug, Clone, PartialEq)]
struct Fault {
    location: String,
    reason: String,
}

impl Fault {
    fn new(location: &str, reason: impl Into<String>) -> Self {
        Self {
            location: location.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// How the host reaches one Lambda function of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionTarget {
    /// The name the host invokes: a `[functions]` key when `local`, else a Lambda function name or
    /// ARN for the Invoke API.
    pub function_name: String,
    /// Whether the host runs it itself (a `[functions]` entry).
    pub local: bool,
    /// The region of a function given by ARN; empty means `api.region`.
    pub region: String,
}

/// What a template says about a Lambda function the host runs itself (a `[functions]` entry):
/// applied to that entry unless the configuration sets the same field itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FunctionSettings {
    /// `Timeout` (whole seconds, 1 to 900): the function's own deadline, as on Lambda.
    pub timeout: Option<Duration>,
    /// `MemorySize` in MB (128 to 10240), reported as `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub memory_size: Option<u32>,
    /// `Environment.Variables`, `Globals.Function`'s merged under the function's own.
    pub environment: BTreeMap<String, String>,
    /// Variables left out because their value names a deployed resource (`!Ref Table`, `!GetAtt
    /// …`), which only CloudFormation knows; `[functions.NAME] environment` can supply them.
    pub unresolved: Vec<String>,
}

/// The throttling an `AWS::ApiGatewayV2::Stage` sets (its logging and metrics settings are not
/// read).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageSettings {
    /// `DefaultRouteSettings`: `ThrottlingRateLimit` and `ThrottlingBurstLimit`.
    pub default_route_settings: RouteSettings,
    /// `RouteSettings`: the same, by route key; each limit a route leaves unset is the default's.
    pub route_settings: BTreeMap<String, RouteSettings>,
}

/// The API a template describes, in the host's configuration types.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiDefinition {
    /// The template file.
    pub path: PathBuf,
    /// Logical ID of the `AWS::ApiGatewayV2::Api` served.
    pub api: String,
    /// The API's `RouteSelectionExpression`.
    pub route_selection_expression: RouteSelectionExpression,
    /// `StageName` of each `AWS::ApiGatewayV2::Stage` of the API.
    pub stages: Vec<String>,
    /// The throttling of each stage that sets any, by `StageName`.
    pub stage_settings: BTreeMap<String, StageSettings>,
    /// Routes by route key, integrations and authorizers named by their logical IDs.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Integrations by logical ID.
    pub integrations: BTreeMap<String, IntegrationConfig>,
    /// Authorizers by logical ID.
    pub authorizers: BTreeMap<String, AuthorizerConfig>,
    /// How each Lambda function used is reached, by logical ID (or function name, for a literal ARN).
    pub functions: BTreeMap<String, FunctionTarget>,
    /// The template's `Timeout`, `MemorySize` and `Environment` for each function the host runs
    /// itself, by `[functions]` name.
    pub function_settings: BTreeMap<String, FunctionSettings>,
}

/// Applies the template `config.template.file` names, if any: its route selection expression,
/// routes, integrations, authorizers and (single) stage replace the configuration's, which the
/// file and the environment must then leave unset (see [`crate::config::Provenance`]).
pub fn apply(mut config: Config) -> Result<(Config, Option<ApiDefinition>), TemplateError> {
    let Some(path) = config.template.file.clone() else {
        return Ok((config, None));
    };
    let definition = ApiDefinition::load(&path, &config)?;
    let stage_flag = config.provenance.stage_flag;
    let template_defines = |key: &&str| {
        crate::config::TEMPLATE_KEYS.contains(key)
            || (*key == "api.stage" && !definition.stages.is_empty() && !stage_flag)
    };
    if let Some(key) = config
        .provenance
        .given
        .iter()
        .map(String::as_str)
        .find(template_defines)
    {
        return Err(TemplateError::Setting {
            field: key.into(),
            reason: format!(
                "the template {} defines it; remove it from the configuration (or stop using the template)",
                path.display()
            ),
        });
    }
    if !stage_flag {
        match definition.stages.as_slice() {
            [] => {}
            [one] => config.api.stage.clone_from(one),
            many => {
                return Err(TemplateError::Setting {
                    field: "api.stage".into(),
                    reason: format!(
                        "the template {} has several stages ({}): choose one with --stage",
                        path.display(),
                        many.join(", ")
                    ),
                });
            }
        }
    }
    config.api.route_selection_expression = definition.route_selection_expression.clone();
    // The template's Timeout, MemorySize and Environment for the functions the host runs
    // itself, unless the configuration sets the field (or, for the environment, the variable).
    for (name, settings) in &definition.function_settings {
        let unset = |field: &str| !config.provenance.gave(&format!("functions.{name}.{field}"));
        let (timeout_unset, memory_unset) = (unset("timeout"), unset("memory_size"));
        let Some(function) = config.functions.get_mut(name) else {
            continue;
        };
        if let Some(timeout) = settings.timeout.filter(|_| timeout_unset) {
            function.timeout = timeout;
        }
        if let Some(memory_size) = settings.memory_size.filter(|_| memory_unset) {
            function.memory_size = memory_size;
        }
        for (variable, value) in &settings.environment {
            function
                .environment
                .entry(variable.clone())
                .or_insert_with(|| value.clone());
        }
    }
    config.routes.clone_from(&definition.routes);
    config.integrations.clone_from(&definition.integrations);
    config.authorizers.clone_from(&definition.authorizers);
    // The served stage's throttling. Its DefaultRouteSettings replace the configuration's, which
    // must then leave them unset; a template stage without them leaves the configuration's.
    if let Some(stage) = definition.stage_settings.get(&config.api.stage) {
        if !stage.default_route_settings.is_unset() {
            if config.provenance.gave("api.default_route_settings") {
                return Err(TemplateError::Setting {
                    field: "api.default_route_settings".into(),
                    reason: format!(
                        "the template {} sets the DefaultRouteSettings of stage {}; remove it from the configuration (or from the template)",
                        path.display(),
                        config.api.stage
                    ),
                });
            }
            config.api.default_route_settings = stage.default_route_settings;
        }
        for (key, settings) in &stage.route_settings {
            if let Some(route) = config.routes.get_mut(key) {
                route.throttling_rate_limit = settings.throttling_rate_limit;
                route.throttling_burst_limit = settings.throttling_burst_limit;
            }
        }
    }
    Ok((config, Some(definition)))
}

impl ApiDefinition {
    /// Reads the template at `path`; `config` supplies `[template]`, `[functions]` and the region
    /// and account for `AWS::Region` and `AWS::AccountId`.
    pub fn load(path: &Path, config: &Config) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(&text, path, config)
    }

    /// Reads a template's text; `path` is only used in messages and [`ApiDefinition::path`].
    pub fn from_text(text: &str, path: &Path, config: &Config) -> Result<Self, TemplateError> {
        let invalid = |fault: Fault| TemplateError::Invalid {
            path: path.to_path_buf(),
            location: fault.location,
            reason: fault.reason,
        };
        let root = document::parse(text).map_err(invalid)?;
        let mut loader = Loader::new(&root, config).map_err(|e| match e {
            LoaderError::Fault(f) => invalid(f),
            LoaderError::Setting(e) => e,
        })?;
        let definition = loader.definition(path).map_err(invalid)?;
        loader.check_settings()?;
        Ok(definition)
    }

    /// A few lines saying what the template defines and how its functions are reached, for
    /// `config check`.
    pub fn summary(&self) -> Vec<String> {
        let stage = match self.stages.as_slice() {
            [] => "no stage (api.stage applies)".to_string(),
            [one] => format!("stage {one}"),
            many => format!("stages {}", many.join(", ")),
        };
        let mut lines = vec![format!(
            "template {}: API {} ({stage}, route selection expression {}); it defines the routes, integrations, authorizers, route selection expression and stage, which the configuration must not set",
            self.path.display(),
            self.api,
            self.route_selection_expression
        )];
        // An unset limit of the default is the account's; of a route, the default's.
        let limits = |s: &RouteSettings, unset: &str| {
            let limit = |v: Option<String>| v.unwrap_or_else(|| unset.into());
            format!(
                "rate {}, burst {}",
                limit(s.throttling_rate_limit.map(|r| format!("{r}/s"))),
                limit(s.throttling_burst_limit.map(|b| b.to_string()))
            )
        };
        for (stage, settings) in &self.stage_settings {
            let mut line = format!("  stage {stage} throttling:");
            if !settings.default_route_settings.is_unset() {
                line.push_str(&format!(
                    " default {};",
                    limits(&settings.default_route_settings, "account")
                ));
            }
            for (key, route) in &settings.route_settings {
                line.push_str(&format!(" route {key} {};", limits(route, "default")));
            }
            line.pop();
            lines.push(line);
        }
        for (key, route) in &self.routes {
            let mut line = format!("  route {key} -> {}", route.integration);
            if let Some(authorizer) = &route.authorizer {
                line.push_str(&format!(", authorizer {authorizer}"));
            }
            if route.two_way {
                line.push_str(", two-way");
            }
            lines.push(line);
        }
        for (id, target) in &self.functions {
            lines.push(if target.local {
                let mut line = format!("  function {id} -> local function {}", target.function_name);
                if let Some(unresolved) = self
                    .function_settings
                    .get(&target.function_name)
                    .map(|s| &s.unresolved)
                    .filter(|u| !u.is_empty())
                {
                    line.push_str(&format!(
                        " (the template's {} refer to deployed resources: set them in [functions.{}] environment)",
                        unresolved.join(", "),
                        target.function_name
                    ));
                }
                line
            } else {
                format!(
                    "  function {id} -> Lambda Invoke API, function {}",
                    target.function_name
                )
            });
        }
        lines
    }
}

enum LoaderError {
    Fault(Fault),
    Setting(TemplateError),
}

impl From<Fault> for LoaderError {
    fn from(f: Fault) -> Self {
        Self::Fault(f)
    }
}

/// One resource of the template.
#[derive(Clone, Copy)]
struct Resource<'t> {
    id: &'t str,
    kind: &'t str,
    properties: Option<&'t Map<String, Value>>,
}

struct Loader<'t> {
    scope: Scope<'t>,
    /// `Globals.Function`: SAM's defaults for every `AWS::Serverless::Function`.
    globals: Option<&'t Map<String, Value>>,
    function_settings: BTreeMap<String, FunctionSettings>,
    /// Enabled resources: those without a `Condition` or whose `Condition` holds.
    resources: Vec<Resource<'t>>,
    config: &'t Config,
    functions: BTreeMap<String, FunctionTarget>,
    /// Logical IDs of function resources and names from literal ARNs: what
    /// `[template.functions]` may name.
    function_keys: BTreeSet<String>,
}

fn at(resource: &str, property: &str) -> String {
    format!("Resources.{resource}.Properties.{property}")
}

/// `ThrottlingRateLimit` and `ThrottlingBurstLimit` of a `RouteSettings` value (a stage's
/// `DefaultRouteSettings`, or one route's entry of its `RouteSettings`); the logging and metrics
/// settings beside them are not read.
fn throttling(value: Val, location: &str) -> Result<RouteSettings, Fault> {
    let mut map = match value {
        Val::Null => return Ok(RouteSettings::default()),
        Val::Map(map) => map,
        _ => return Err(Fault::new(location, "must be a mapping")),
    };
    let mut field = |name: &str| {
        let location = format!("{location}.{name}");
        let text = match map.remove(name) {
            None | Some(Val::Null) => None,
            Some(value) => Some(value.as_literal().ok_or_else(|| {
                Fault::new(&location, "must be a number without resource references")
            })?),
        };
        Ok::<_, Fault>(text.map(|t| (t, location)))
    };
    let rate = match field("ThrottlingRateLimit")? {
        None => None,
        Some((text, location)) => Some(
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or_else(|| {
                    Fault::new(
                        &location,
                        "must be a number of requests per second, 0 or more",
                    )
                })?,
        ),
    };
    let burst = match field("ThrottlingBurstLimit")? {
        None => None,
        Some((text, location)) => Some(
            text.trim()
                .parse::<u32>()
                .map_err(|_| Fault::new(&location, "must be a whole number, 0 or more"))?,
        ),
    };
    Ok(RouteSettings {
        throttling_rate_limit: rate,
        throttling_burst_limit: burst,
    })
}

impl<'t> Loader<'t> {
    fn new(root: &'t Value, config: &'t Config) -> Result<Self, LoaderError> {
        let resources = root
            .get("Resources")
            .and_then(Value::as_object)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Fault::new("Resources", "a template needs a Resources section"))?;
        let section = |name: &str| -> Result<Option<&'t Map<String, Value>>, Fault> {
            match root.get(name) {
                None => Ok(None),
                Some(Value::Object(map)) => Ok(Some(map)),
                Some(_) => Err(Fault::new(name, "must be a mapping")),
            }
        };
        let declared = section("Parameters")?;
        let overrides = &config.template.parameters;
        for name in overrides.keys() {
            if !declared.is_some_and(|d| d.contains_key(name)) {
                return Err(LoaderError::Setting(TemplateError::Setting {
                    field: format!("template.parameters.{name}"),
                    reason: format!("the template has no parameter {name}"),
                }));
            }
        }
        let mut parameters = BTreeMap::new();
        for (name, declaration) in declared.into_iter().flatten() {
            let location = format!("Parameters.{name}");
            let kind = declaration
                .get("Type")
                .and_then(Value::as_str)
                .unwrap_or("String");
            let is_list = kind == "CommaDelimitedList" || kind.starts_with("List<");
            let text = match (overrides.get(name), declaration.get("Default")) {
                (Some(value), _) => Some(value.clone()),
                (None, Some(Value::String(s))) => Some(s.clone()),
                (None, Some(v @ (Value::Number(_) | Value::Bool(_)))) => Some(v.to_string()),
                (None, Some(Value::Array(items))) if is_list => Some(
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                (None, Some(_)) => {
                    return Err(Fault::new(&location, "Default must be a string").into());
                }
                (None, None) => None,
            };
            let value = text.map(|t| {
                if is_list {
                    Val::List(
                        t.split(',')
                            .map(|s| Val::Text(Text::literal(s.trim())))
                            .collect(),
                    )
                } else {
                    Val::Text(Text::literal(t))
                }
            });
            parameters.insert(name.clone(), value);
        }
        let pseudo = [
            ("AWS::Region", config.api.region.clone()),
            ("AWS::AccountId", config.api.account_id.clone()),
            ("AWS::Partition", "aws".to_string()),
            ("AWS::URLSuffix", "amazonaws.com".to_string()),
            ("AWS::StackName", config.template.stack_name.clone()),
        ]
        .into();
        let scope = Scope {
            parameters,
            pseudo,
            resources,
            mappings: section("Mappings")?,
            conditions: section("Conditions")?,
        };
        let mut enabled = Vec::new();
        for (id, resource) in resources {
            let kind = resource
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Fault::new(
                        &format!("Resources.{id}.Type"),
                        "must be a resource type string",
                    )
                })?;
            let location = format!("Resources.{id}.Condition");
            let wanted = match resource.get("Condition") {
                None => true,
                Some(Value::String(condition)) => scope.condition(condition, &location, 0)?,
                Some(_) => return Err(Fault::new(&location, "must name a condition").into()),
            };
            if !wanted {
                continue;
            }
            let properties = match resource.get("Properties") {
                None | Some(Value::Null) => None,
                Some(Value::Object(p)) => Some(p),
                Some(_) => {
                    return Err(Fault::new(
                        &format!("Resources.{id}.Properties"),
                        "must be a mapping",
                    )
                    .into());
                }
            };
            enabled.push(Resource {
                id,
                kind,
                properties,
            });
        }
        let function_keys = enabled
            .iter()
            .filter(|r| FUNCTION_TYPES.contains(&r.kind))
            .map(|r| r.id.to_string())
            .collect();
        let globals = match root.get("Globals").and_then(|g| g.get("Function")) {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(Fault::new("Globals.Function", "must be a mapping").into()),
        };
        Ok(Self {
            scope,
            globals,
            function_settings: BTreeMap::new(),
            resources: enabled,
            config,
            functions: BTreeMap::new(),
            function_keys,
        })
    }

    fn of_type(&self, kind: &str) -> Vec<Resource<'t>> {
        self.resources
            .iter()
            .filter(|r| r.kind == kind)
            .copied()
            .collect()
    }

    fn find(&self, id: &str) -> Option<Resource<'t>> {
        self.resources.iter().find(|r| r.id == id).copied()
    }

    /// A property, evaluated; `None` when absent (or `AWS::NoValue`).
    fn property(&self, r: Resource<'_>, name: &str) -> Result<Option<Val>, Fault> {
        let Some(value) = r.properties.and_then(|p| p.get(name)) else {
            return Ok(None);
        };
        match self.scope.resolve(value, &at(r.id, name))? {
            Val::Null => Ok(None),
            v => Ok(Some(v)),
        }
    }

    /// A property that must be a plain string (numbers and booleans in their written form).
    fn string(&self, r: Resource<'_>, name: &str) -> Result<Option<String>, Fault> {
        match self.property(r, name)? {
            None => Ok(None),
            Some(v) => v.as_literal().map(Some).ok_or_else(|| {
                Fault::new(&at(r.id, name), "must be a string without resource references (the host cannot know a deployed resource's ID or ARN)")
            }),
        }
    }

    fn required_string(&self, r: Resource<'_>, name: &str) -> Result<String, Fault> {
        self.string(r, name)?
            .ok_or_else(|| Fault::new(&at(r.id, name), "is required"))
    }

    /// A property that must be `!Ref Logical`: the logical ID.
    fn reference(&self, r: Resource<'_>, name: &str) -> Result<Option<String>, Fault> {
        match self.property(r, name)? {
            None => Ok(None),
            Some(Val::Text(Text(pieces))) => match pieces.as_slice() {
                [
                    Piece::Resource {
                        id,
                        attribute: None,
                    },
                ] => Ok(Some(id.clone())),
                _ => Err(Fault::new(
                    &at(r.id, name),
                    "must be !Ref to a resource of this template",
                )),
            },
            Some(_) => Err(Fault::new(
                &at(r.id, name),
                "must be !Ref to a resource of this template",
            )),
        }
    }

    /// Whether an API Gateway child resource belongs to the API `api`.
    fn belongs(&self, r: Resource<'_>, api: &str) -> Result<bool, Fault> {
        match self.reference(r, "ApiId")? {
            Some(id) => Ok(id == api),
            None => Err(Fault::new(
                &at(r.id, "ApiId"),
                "is required (!Ref to the API)",
            )),
        }
    }

    fn children(&self, kind: &str, api: &str) -> Result<Vec<Resource<'t>>, Fault> {
        let mut out = Vec::new();
        for r in self.of_type(kind) {
            if self.belongs(r, api)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn definition(&mut self, path: &Path) -> Result<ApiDefinition, Fault> {
        let api = self.api()?;
        let expression = self.required_string(api, "RouteSelectionExpression")?;
        let route_selection_expression = RouteSelectionExpression::parse(&expression)
            .map_err(|e| Fault::new(&at(api.id, "RouteSelectionExpression"), e.to_string()))?;

        let mut stages = Vec::new();
        let stage_resources = self.children("AWS::ApiGatewayV2::Stage", api.id)?;
        for stage in &stage_resources {
            stages.push(self.required_string(*stage, "StageName")?);
        }

        // Integration responses first: a MOCK integration's response template lives there.
        let mut response_templates = BTreeMap::new();
        for response in self.children("AWS::ApiGatewayV2::IntegrationResponse", api.id)? {
            if self.string(response, "IntegrationResponseKey")?.as_deref() != Some("$default") {
                continue;
            }
            let Some(integration) = self.reference(response, "IntegrationId")? else {
                return Err(Fault::new(&at(response.id, "IntegrationId"), "is required"));
            };
            let template = self.response_template(response)?;
            response_templates.insert(integration, template);
        }

        let mut integrations = BTreeMap::new();
        let mut timeouts = BTreeMap::new();
        for r in self.children("AWS::ApiGatewayV2::Integration", api.id)? {
            let timeout = match self.string(r, "TimeoutInMillis")? {
                None => Duration::from_secs(29),
                Some(ms) => match ms.parse::<u64>() {
                    Ok(ms @ 50..=29_000) => Duration::from_millis(ms),
                    _ => {
                        return Err(Fault::new(
                            &at(r.id, "TimeoutInMillis"),
                            "must be from 50 to 29000 (API Gateway's range)",
                        ));
                    }
                },
            };
            let integration = self.integration(r, response_templates.remove(r.id))?;
            timeouts.insert(r.id.to_string(), timeout);
            integrations.insert(r.id.to_string(), integration);
        }

        let mut authorizers = BTreeMap::new();
        for r in self.children("AWS::ApiGatewayV2::Authorizer", api.id)? {
            let authorizer = self.authorizer(r)?;
            authorizers.insert(r.id.to_string(), authorizer);
        }

        let mut two_way_routes = BTreeSet::new();
        for response in self.children("AWS::ApiGatewayV2::RouteResponse", api.id)? {
            if self.string(response, "RouteResponseKey")?.as_deref() == Some("$default") {
                let route = self
                    .reference(response, "RouteId")?
                    .ok_or_else(|| Fault::new(&at(response.id, "RouteId"), "is required"))?;
                two_way_routes.insert(route);
            }
        }

        let mut routes = BTreeMap::new();
        for r in self.children("AWS::ApiGatewayV2::Route", api.id)? {
            let key = self.required_string(r, "RouteKey")?;
            let integration = self.route_target(r, &integrations)?;
            let authorizer = self.route_authorizer(r, &key, &authorizers)?;
            if self.string(r, "ApiKeyRequired")?.as_deref() == Some("true") {
                return Err(Fault::new(
                    &at(r.id, "ApiKeyRequired"),
                    "API keys are not supported by the connection host",
                ));
            }
            let two_way = match self
                .string(r, "RouteResponseSelectionExpression")?
                .as_deref()
            {
                None => false,
                Some("$default") => two_way_routes.contains(r.id),
                Some(_) => {
                    return Err(Fault::new(
                        &at(r.id, "RouteResponseSelectionExpression"),
                        "must be $default (the only value API Gateway accepts)",
                    ));
                }
            };
            // API Gateway accepts route responses on $connect and $disconnect but sends nothing to
            // the client there, so they are not two-way routes.
            let two_way = two_way && key != "$connect" && key != "$disconnect";
            let route = RouteConfig {
                timeout: timeouts[&integration],
                integration,
                two_way,
                authorizer,
                // The stage's RouteSettings, applied with the stage the host serves.
                throttling_rate_limit: None,
                throttling_burst_limit: None,
                ordered: false,
            };
            if routes.insert(key.clone(), route).is_some() {
                return Err(Fault::new(
                    &at(r.id, "RouteKey"),
                    format!("route key {key} is defined twice"),
                ));
            }
        }

        let mut stage_settings = BTreeMap::new();
        for (stage, name) in stage_resources.into_iter().zip(&stages) {
            let settings = self.stage_settings(stage, &routes)?;
            if settings != StageSettings::default() {
                stage_settings.insert(name.clone(), settings);
            }
        }

        Ok(ApiDefinition {
            path: path.to_path_buf(),
            api: api.id.to_string(),
            route_selection_expression,
            stages,
            stage_settings,
            routes,
            integrations,
            authorizers,
            functions: std::mem::take(&mut self.functions),
            function_settings: std::mem::take(&mut self.function_settings),
        })
    }

    /// The WebSocket API to serve: `[template] api`, else the template's only one.
    fn api(&self) -> Result<Resource<'t>, Fault> {
        let mut websocket = Vec::new();
        for r in self.of_type("AWS::ApiGatewayV2::Api") {
            if self.string(r, "ProtocolType")?.as_deref() == Some("WEBSOCKET") {
                websocket.push(r);
            }
        }
        let chosen = &self.config.template.api;
        if !chosen.is_empty() {
            return websocket.into_iter().find(|r| r.id == chosen).ok_or_else(|| {
                Fault::new("Resources", format!("template.api names {chosen}, which is not an AWS::ApiGatewayV2::Api with ProtocolType WEBSOCKET"))
            });
        }
        match websocket.as_slice() {
            [one] => Ok(*one),
            [] => Err(Fault::new(
                "Resources",
                "no AWS::ApiGatewayV2::Api with ProtocolType WEBSOCKET",
            )),
            many => Err(Fault::new(
                "Resources",
                format!(
                    "several WebSocket APIs ({}): choose one with template.api",
                    many.iter().map(|r| r.id).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    fn integration(
        &mut self,
        r: Resource<'_>,
        response_template: Option<String>,
    ) -> Result<IntegrationConfig, Fault> {
        let kind = self.required_string(r, "IntegrationType")?;
        match kind.as_str() {
            "AWS_PROXY" => {
                let uri = self
                    .property(r, "IntegrationUri")?
                    .ok_or_else(|| Fault::new(&at(r.id, "IntegrationUri"), "is required"))?;
                let target = self.lambda(uri, &at(r.id, "IntegrationUri"))?;
                Ok(IntegrationConfig::Lambda {
                    function_name: target.function_name,
                    endpoint_url: String::new(),
                    region: target.region,
                })
            }
            "HTTP_PROXY" => {
                let url = self.required_string(r, "IntegrationUri")?;
                let method = self
                    .string(r, "IntegrationMethod")?
                    .unwrap_or_else(|| "POST".to_string());
                let mut request_parameters = BTreeMap::new();
                match self.property(r, "RequestParameters")? {
                    None => {}
                    Some(Val::Map(map)) => {
                        for (name, value) in map {
                            let value = value.as_literal().ok_or_else(|| {
                                Fault::new(
                                    &at(r.id, "RequestParameters"),
                                    format!("{name} must be a string"),
                                )
                            })?;
                            request_parameters.insert(name, value);
                        }
                    }
                    Some(_) => {
                        return Err(Fault::new(
                            &at(r.id, "RequestParameters"),
                            "must be a mapping",
                        ));
                    }
                }
                Ok(IntegrationConfig::HttpProxy {
                    url,
                    method,
                    request_parameters,
                })
            }
            "MOCK" => Ok(IntegrationConfig::Mock {
                status_code: self.mock_status(r)?,
                response_template: response_template.unwrap_or_default(),
            }),
            "AWS" | "HTTP" => Err(Fault::new(
                &at(r.id, "IntegrationType"),
                format!(
                    "{kind} (non-proxy, with mapping templates) is not supported; the host runs AWS_PROXY (Lambda), HTTP_PROXY and MOCK integrations"
                ),
            )),
            other => Err(Fault::new(
                &at(r.id, "IntegrationType"),
                format!("unknown integration type {other}: expected AWS_PROXY, HTTP_PROXY or MOCK"),
            )),
        }
    }

    /// A MOCK integration's status: the `statusCode` its request template returns (API
    /// Gateway's MOCK convention, `{"statusCode": 200}`), 200 without one.
    fn mock_status(&self, r: Resource<'_>) -> Result<u16, Fault> {
        let Some(templates) = self.property(r, "RequestTemplates")? else {
            return Ok(200);
        };
        let Val::Map(templates) = templates else {
            return Err(Fault::new(
                &at(r.id, "RequestTemplates"),
                "must be a mapping",
            ));
        };
        for template in templates.values() {
            let Some(text) = template.as_literal() else {
                continue;
            };
            if let Ok(Value::Object(body)) = serde_json::from_str::<Value>(&text)
                && let Some(status) = body.get("statusCode")
            {
                return status
                    .as_u64()
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        Fault::new(
                            &at(r.id, "RequestTemplates"),
                            "statusCode must be an HTTP status code",
                        )
                    });
            }
        }
        Ok(200)
    }

    /// The `$default` integration response's template: the only one, else the one its
    /// `TemplateSelectionExpression` names, else the `$default` one.
    fn response_template(&self, r: Resource<'_>) -> Result<String, Fault> {
        let Some(templates) = self.property(r, "ResponseTemplates")? else {
            return Ok(String::new());
        };
        let Val::Map(templates) = templates else {
            return Err(Fault::new(
                &at(r.id, "ResponseTemplates"),
                "must be a mapping",
            ));
        };
        let selection = self.string(r, "TemplateSelectionExpression")?;
        let chosen = if templates.len() == 1 {
            templates.values().next()
        } else {
            selection
                .as_deref()
                .and_then(|s| templates.get(s))
                .or_else(|| templates.get("$default"))
        };
        match chosen {
            None => Ok(String::new()),
            Some(v) => v.as_literal().ok_or_else(|| {
                Fault::new(&at(r.id, "ResponseTemplates"), "templates must be strings")
            }),
        }
    }

    fn authorizer(&mut self, r: Resource<'_>) -> Result<AuthorizerConfig, Fault> {
        let kind = self.required_string(r, "AuthorizerType")?;
        if kind != "REQUEST" {
            return Err(Fault::new(
                &at(r.id, "AuthorizerType"),
                format!("{kind}: WebSocket APIs have REQUEST (Lambda) authorizers only"),
            ));
        }
        let uri = self
            .property(r, "AuthorizerUri")?
            .ok_or_else(|| Fault::new(&at(r.id, "AuthorizerUri"), "is required"))?;
        let target = self.lambda(uri, &at(r.id, "AuthorizerUri"))?;
        let mut identity_sources = Vec::new();
        let location = at(r.id, "IdentitySource");
        let sources = match self.property(r, "IdentitySource")? {
            None => Vec::new(),
            Some(Val::List(items)) => items,
            Some(one @ Val::Text(_)) => vec![one],
            Some(_) => return Err(Fault::new(&location, "must be a list of strings")),
        };
        for source in sources {
            let text = source
                .as_literal()
                .ok_or_else(|| Fault::new(&location, "must be a list of strings"))?;
            identity_sources.push(
                text.parse::<IdentitySource>()
                    .map_err(|e| Fault::new(&location, e.to_string()))?,
            );
        }
        Ok(AuthorizerConfig::Request(RequestAuthorizerConfig {
            function_name: target.function_name,
            endpoint_url: String::new(),
            region: target.region,
            identity_sources,
        }))
    }

    /// A route's `Target`: `integrations/` followed by a reference to one of the API's integrations.
    fn route_target(
        &self,
        r: Resource<'_>,
        integrations: &BTreeMap<String, IntegrationConfig>,
    ) -> Result<String, Fault> {
        let location = at(r.id, "Target");
        let target = self.property(r, "Target")?.ok_or_else(|| {
            Fault::new(
                &location,
                "is required: the host serves routes with an integration (integrations/ID)",
            )
        })?;
        let id = match &target {
            Val::Text(Text(pieces)) => match pieces.as_slice() {
                [
                    Piece::Literal(prefix),
                    Piece::Resource {
                        id,
                        attribute: None,
                    },
                ] if prefix == "integrations/" => Some(id.clone()),
                _ => None,
            },
            _ => None,
        };
        let id = id.ok_or_else(|| {
            Fault::new(&location, "must be integrations/ followed by !Ref to an integration of this template, e.g. !Sub integrations/${ChatIntegration}")
        })?;
        if !integrations.contains_key(&id) {
            return Err(Fault::new(
                &location,
                format!("{id} is not an AWS::ApiGatewayV2::Integration of this API"),
            ));
        }
        Ok(id)
    }

    fn route_authorizer(
        &self,
        r: Resource<'_>,
        key: &str,
        authorizers: &BTreeMap<String, AuthorizerConfig>,
    ) -> Result<Option<String>, Fault> {
        match self.string(r, "AuthorizationType")?.as_deref() {
            None | Some("NONE") => Ok(None),
            Some("CUSTOM") => {
                if key != "$connect" {
                    return Err(Fault::new(
                        &at(r.id, "AuthorizationType"),
                        "only the $connect route can have an authorizer",
                    ));
                }
                let id = self.reference(r, "AuthorizerId")?.ok_or_else(|| {
                    Fault::new(
                        &at(r.id, "AuthorizerId"),
                        "is required with AuthorizationType CUSTOM",
                    )
                })?;
                if !authorizers.contains_key(&id) {
                    return Err(Fault::new(
                        &at(r.id, "AuthorizerId"),
                        format!("{id} is not an AWS::ApiGatewayV2::Authorizer of this API"),
                    ));
                }
                Ok(Some(id))
            }
            Some(other) => Err(Fault::new(
                &at(r.id, "AuthorizationType"),
                format!(
                    "{other} is not supported: the host authorizes connections with NONE or CUSTOM (a REQUEST authorizer)"
                ),
            )),
        }
    }

    /// The Lambda function an `IntegrationUri` or `AuthorizerUri` invokes, mapped by the rules
    /// in the module documentation.
    fn lambda(&mut self, uri: Val, location: &str) -> Result<FunctionTarget, Fault> {
        let Val::Text(text) = uri else {
            return Err(Fault::new(
                location,
                "must be a Lambda invocation URI or function ARN",
            ));
        };
        if let Some(literal) = text.as_literal() {
            let arn = literal
                .split_once(":lambda:path/2015-03-31/functions/")
                .map_or(literal.as_str(), |(_, rest)| rest);
            let arn = arn.strip_suffix("/invocations").unwrap_or(arn);
            let Some(name) = function_name_of(arn) else {
                return Err(Fault::new(
                    location,
                    format!("{literal} is not a Lambda function ARN or invocation URI"),
                ));
            };
            self.function_keys.insert(name.to_string());
            let region = arn_region(arn).to_string();
            let target = self.map_function(name, None, arn, &region);
            return Ok(target);
        }
        let mut functions = text.resources();
        let (Some((id, attribute)), None) = (functions.next(), functions.next()) else {
            return Err(Fault::new(
                location,
                "must refer to one Lambda function (!GetAtt Function.Arn in the invocation URI)",
            ));
        };
        let Some(function) = self.find(id) else {
            return Err(Fault::new(
                location,
                format!("{id} is not a resource of this template (or its Condition is false)"),
            ));
        };
        if !FUNCTION_TYPES.contains(&function.kind) || !matches!(attribute, None | Some("Arn")) {
            return Err(Fault::new(
                location,
                format!(
                    "refers to {id} ({}): expected a Lambda function's ARN (AWS::Serverless::Function or AWS::Lambda::Function)",
                    function.kind
                ),
            ));
        }
        // A mapped function's FunctionName is not needed, so it may use what the loader cannot
        // evaluate; otherwise it decides where the invocations go, and must be known.
        let declared_name = if self.config.template.functions.contains_key(id) {
            None
        } else {
            self.string(function, "FunctionName")?
        };
        let id = id.to_string();
        let target = self.map_function(&id, declared_name.as_deref(), "", "");
        if target.local {
            let settings = self.function_settings(function)?;
            self.function_settings
                .insert(target.function_name.clone(), settings);
        }
        Ok(target)
    }

    /// A function's property, else (for a SAM function) `Globals.Function`'s, evaluated.
    fn function_property(&self, r: Resource<'_>, name: &str) -> Result<Option<Val>, Fault> {
        if let Some(v) = self.property(r, name)? {
            return Ok(Some(v));
        }
        match self.globals.and_then(|g| g.get(name)) {
            Some(value) if r.kind == "AWS::Serverless::Function" => {
                match self
                    .scope
                    .resolve(value, &format!("Globals.Function.{name}"))?
                {
                    Val::Null => Ok(None),
                    v => Ok(Some(v)),
                }
            }
            _ => Ok(None),
        }
    }

    /// A stage's `DefaultRouteSettings` and `RouteSettings` throttling; `RouteSettings` may only
    /// name routes of the API, as on API Gateway.
    fn stage_settings(
        &self,
        stage: Resource<'_>,
        routes: &BTreeMap<String, RouteConfig>,
    ) -> Result<StageSettings, Fault> {
        let mut settings = StageSettings {
            default_route_settings: match self.property(stage, "DefaultRouteSettings")? {
                None => RouteSettings::default(),
                Some(value) => throttling(value, &at(stage.id, "DefaultRouteSettings"))?,
            },
            ..StageSettings::default()
        };
        let location = at(stage.id, "RouteSettings");
        match self.property(stage, "RouteSettings")? {
            None => {}
            Some(Val::Map(by_route)) => {
                for (key, value) in by_route {
                    let location = format!("{location}.{key}");
                    if !routes.contains_key(&key) {
                        return Err(Fault::new(
                            &location,
                            format!("names no route of the API (route key {key})"),
                        ));
                    }
                    let route = throttling(value, &location)?;
                    if !route.is_unset() {
                        settings.route_settings.insert(key, route);
                    }
                }
            }
            Some(_) => {
                return Err(Fault::new(
                    &location,
                    "must be a mapping from route key to settings",
                ));
            }
        }
        Ok(settings)
    }

    /// `Timeout`, `MemorySize` and `Environment.Variables` of a function the host runs itself.
    fn function_settings(&self, r: Resource<'_>) -> Result<FunctionSettings, Fault> {
        let number =
            |name: &str, range: std::ops::RangeInclusive<u32>| -> Result<Option<u32>, Fault> {
                let Some(value) = self.function_property(r, name)? else {
                    return Ok(None);
                };
                value
                    .as_literal()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|v| range.contains(v))
                    .map(Some)
                    .ok_or_else(|| {
                        Fault::new(
                            &at(r.id, name),
                            format!(
                                "must be a whole number from {} to {} (Lambda's range)",
                                range.start(),
                                range.end()
                            ),
                        )
                    })
            };
        let mut settings = FunctionSettings {
            timeout: number("Timeout", 1..=900)?.map(|s| Duration::from_secs(s.into())),
            memory_size: number("MemorySize", 128..=10_240)?,
            ..FunctionSettings::default()
        };
        let mut variables = BTreeMap::new();
        // SAM merges the two maps, the function's variables winning.
        let globals = self
            .globals
            .filter(|_| r.kind == "AWS::Serverless::Function")
            .and_then(|g| g.get("Environment"))
            .map(|e| self.scope.resolve(e, "Globals.Function.Environment"))
            .transpose()?;
        for (environment, location) in [
            (globals, "Globals.Function.Environment".to_string()),
            (self.property(r, "Environment")?, at(r.id, "Environment")),
        ] {
            match environment {
                None | Some(Val::Null) => {}
                Some(Val::Map(mut map)) => match map.remove("Variables") {
                    None | Some(Val::Null) => {}
                    Some(Val::Map(vars)) => variables.extend(vars),
                    Some(_) => {
                        return Err(Fault::new(
                            &format!("{location}.Variables"),
                            "must be a mapping",
                        ));
                    }
                },
                Some(_) => return Err(Fault::new(&location, "must be a mapping")),
            }
        }
        for (name, value) in variables {
            match value {
                // `!Ref AWS::NoValue` removes the variable.
                Val::Null => {}
                Val::List(_) | Val::Map(_) => {
                    return Err(Fault::new(
                        &at(r.id, "Environment.Variables"),
                        format!("{name} must be a string"),
                    ));
                }
                value => match value.as_literal() {
                    Some(text) => {
                        settings.environment.insert(name, text);
                    }
                    None => settings.unresolved.push(name),
                },
            }
        }
        Ok(settings)
    }

    /// Applies the rules of the module documentation to one function, and records the result.
    fn map_function(
        &mut self,
        key: &str,
        declared_name: Option<&str>,
        arn: &str,
        region: &str,
    ) -> FunctionTarget {
        let local = &self.config.functions;
        let target = if let Some(mapped) = self.config.template.functions.get(key) {
            FunctionTarget {
                function_name: mapped.clone(),
                local: local.contains_key(mapped),
                region: arn_region(mapped).to_string(),
            }
        } else if let Some(name) = [Some(key), declared_name]
            .into_iter()
            .flatten()
            .find(|n| local.contains_key(*n))
        {
            FunctionTarget {
                function_name: name.to_string(),
                local: true,
                region: String::new(),
            }
        } else {
            let name = declared_name
                .or((!arn.is_empty()).then_some(arn))
                .unwrap_or(key);
            FunctionTarget {
                function_name: name.to_string(),
                local: false,
                region: region.to_string(),
            }
        };
        self.functions.insert(key.to_string(), target.clone());
        target
    }

    /// Every `[template.functions]` key must name a function of the template (catches typos that
    /// would otherwise send invocations to AWS).
    fn check_settings(&self) -> Result<(), TemplateError> {
        for key in self.config.template.functions.keys() {
            if !self.function_keys.contains(key) {
                return Err(TemplateError::Setting {
                    field: format!("template.functions.{key}"),
                    reason: format!(
                        "the template has no Lambda function {key} (known: {})",
                        self.function_keys
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` → `NAME`; a plain function name is
/// itself.
fn function_name_of(arn: &str) -> Option<&str> {
    if !arn.starts_with("arn:") {
        let plain = !arn.is_empty()
            && arn
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        return plain.then_some(arn);
    }
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "lambda", _, _, "function", name, ..] if !name.is_empty() => Some(name),
        _ => None,
    }
}

/// The region of an ARN; empty for anything else.
fn arn_region(arn: &str) -> &str {
    match arn.split(':').collect::<Vec<_>>().as_slice() {
        ["arn", _, _, region, ..] => region,
        _ => "",
    }
}

#[cfg(test)]
mod tests;
