//! `[functions]` and `[template]`: the functions the host runs itself, and the template the API
//! definition may come from.

use super::*;

/// A Lambda function the host runs itself: real handler binaries (`lambda_http`,
/// `lambda_runtime`) talking to the host's Lambda Runtime API, one process per unit of concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionConfig {
    /// The executable. `${NAME}` and `${NAME:-default}` are replaced from the environment, e.g.
    /// `"${CARGO_TARGET_DIR:-target}/debug/chat"`; a relative path starts at the working directory.
    pub command: String,
    /// Arguments for the executable.
    pub args: Vec<String>,
    /// A command run once before the host starts, e.g. `["cargo", "build", "--bin", "chat"]`;
    /// if it fails the host does not start. Identical commands of several functions run once.
    pub build: Vec<String>,
    /// Extra environment variables for the function (beside the host's own and Lambda's).
    pub environment: BTreeMap<String, String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` in MB, 128 to 10240 (reported, not enforced).
    pub memory_size: u32,
    /// Longest an invocation may run; past it the process is killed and restarted and the
    /// invocation fails, as Lambda's function timeout does. 1 s to 900 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Processes kept running: invocations beyond this many wait in a queue.
    pub concurrency: u32,
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            command: String::new(),
            args: Vec::new(),
            build: Vec::new(),
            environment: BTreeMap::new(),
            memory_size: 128,
            timeout: Duration::from_secs(3),
            concurrency: 1,
        }
    }
}

/// The API definition taken from a CloudFormation/SAM template (see the `template` module): with
/// `file` set, the template's `AWS::ApiGatewayV2::*` resources supply the route selection
/// expression, routes, integrations, authorizers and stage, and setting those in the
/// configuration is an error (two definitions of one API would drift apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateConfig {
    /// The template (YAML with short-form tags, or JSON); a relative path starts at the working
    /// directory. `--template` overrides it. Unset: the API is defined by this file.
    pub file: Option<std::path::PathBuf>,
    /// Logical ID of the `AWS::ApiGatewayV2::Api` to serve; empty means the template's only
    /// WebSocket API.
    pub api: String,
    /// How the template's Lambda functions are reached, by logical ID (or, for a function given as
    /// a literal ARN, its function name): a `[functions]` name runs under the local runtime, any
    /// other value is a Lambda function name or ARN for the Invoke API. Unlisted functions run
    /// locally when `[functions]` declares their logical ID or `FunctionName`, else go to the
    /// Invoke API under their `FunctionName` (or logical ID).
    pub functions: BTreeMap<String, String>,
    /// Values for the template's `Parameters`, instead of their `Default`s.
    pub parameters: BTreeMap<String, String>,
    /// What `AWS::StackName` stands for (e.g. in `FunctionName: !Sub ${AWS::StackName}-chat`).
    pub stack_name: String,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self {
            file: None,
            api: String::new(),
            functions: BTreeMap::new(),
            parameters: BTreeMap::new(),
            stack_name: "connection-host".into(),
        }
    }
}
