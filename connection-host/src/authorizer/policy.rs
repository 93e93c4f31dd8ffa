//! The IAM policy an authorizer returns, evaluated the way API Gateway evaluates it (spec §6.3):
//! a matching `Deny` wins, otherwise a matching `Allow` allows, otherwise the request is denied.

use serde_json::Value;

/// The action every statement is checked against: opening a connection invokes `$connect`.
pub const INVOKE_ACTION: &str = "execute-api:Invoke";

/// The outcome of evaluating a policy for one action on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` statement matches and no `Deny` does.
    Allow,
    /// A `Deny` statement matches.
    ExplicitDeny,
    /// No statement matches.
    ImplicitDeny,
}

/// A parsed `policyDocument`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq)]
struct Statement {
    allow: bool,
    actions: Patterns,
    resources: Patterns,
}

/// `Action`/`Resource` (the statement applies to what matches) or `NotAction`/`NotResource` (it
/// applies to what does not).
#[derive(Debug, Clone, PartialEq)]
struct Patterns {
    patterns: Vec<String>,
    negated: bool,
}

/// Why a `policyDocument` cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policyDocument: {0}")]
pub struct InvalidPolicy(pub String);

fn invalid<T>(reason: impl Into<String>) -> Result<T, InvalidPolicy> {
    Err(InvalidPolicy(reason.into()))
}

impl Policy {
    /// Reads a `policyDocument`: `Statement` is one statement object or an array of them.
    pub fn parse(document: &Value) -> Result<Self, InvalidPolicy> {
        let Some(document) = document.as_object() else {
            return invalid("not a JSON object");
        };
        let statements = match document.get("Statement") {
            Some(Value::Array(items)) => items
                .iter()
                .map(Statement::parse)
                .collect::<Result<_, _>>()?,
            Some(one @ Value::Object(_)) => vec![Statement::parse(one)?],
            _ => return invalid("Statement must be a statement object or an array of them"),
        };
        Ok(Self { statements })
    }

    /// Evaluates the policy for `action` on `resource` (an ARN).
    pub fn evaluate(&self, action: &str, resource: &str) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            let applies = statement.actions.matches(|p| {
                wildcard_match(&p.to_ascii_lowercase(), &action.to_ascii_lowercase(), false)
            }) && statement
                .resources
                .matches(|p| wildcard_match(p, resource, true));
            if applies {
                if !statement.allow {
                    return Decision::ExplicitDeny;
                }
                allowed = true;
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

impl Statement {
    fn parse(value: &Value) -> Result<Self, InvalidPolicy> {
        let Some(statement) = value.as_object() else {
            return invalid("a statement is not a JSON object");
        };
        let allow = match statement.get("Effect").and_then(Value::as_str) {
            Some("Allow") => true,
            Some("Deny") => false,
            _ => return invalid("a statement's Effect must be \"Allow\" or \"Deny\""),
        };
        // Conditions need request context API Gateway alone knows; ignoring one would silently
        // widen an Allow, so a statement with a Condition makes the policy unusable instead.
        if statement.contains_key("Condition") {
            return invalid("Condition is not supported");
        }
        Ok(Self {
            allow,
            actions: Patterns::parse(statement, "Action", "NotAction")?,
            resources: Patterns::parse(statement, "Resource", "NotResource")?,
        })
    }
}

impl Patterns {
    fn parse(
        statement: &serde_json::Map<String, Value>,
        key: &str,
        not_key: &str,
    ) -> Result<Self, InvalidPolicy> {
        let (value, negated) = match (statement.get(key), statement.get(not_key)) {
            (Some(v), None) => (v, false),
            (None, Some(v)) => (v, true),
            _ => {
                return invalid(format!(
                    "a statement needs exactly one of {key} and {not_key}"
                ));
            }
        };
        let patterns = match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .map_or_else(
                    || invalid(format!("{key} lists something other than strings")),
                    Ok,
                )?,
            _ => return invalid(format!("{key} must be a string or an array of strings")),
        };
        Ok(Self { patterns, negated })
    }

    fn matches(&self, matcher: impl Fn(&str) -> bool) -> bool {
        self.patterns.iter().any(|p| matcher(p)) != self.negated
    }
}

/// IAM wildcard matching: `*` matches any run of characters and `?` any one character. In an ARN
/// (`arn`), wildcards stay within one colon-separated segment, except a `*` that ends its segment,
/// which may run on past colons (so `arn:aws:execute-api:*` covers every API).
fn wildcard_match(pattern: &str, text: &str, arn: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // matched[j]: whether the pattern so far matches the first j characters of the text.
    let mut matched = vec![false; t.len() + 1];
    matched[0] = true;
    for (i, &pc) in p.iter().enumerate() {
        let mut next = vec![false; t.len() + 1];
        match pc {
            '*' => {
                let crosses_colons = !arn || p.get(i + 1).is_none_or(|&c| c == ':');
                next[0] = matched[0];
                for j in 1..=t.len() {
                    next[j] = matched[j] || (next[j - 1] && (crosses_colons || t[j - 1] != ':'));
                }
            }
            '?' => {
                for j in 1..=t.len() {
                    next[j] = matched[j - 1] && (!arn || t[j - 1] != ':');
                }
            }
            literal => {
                for j in 1..=t.len() {
                    next[j] = matched[j - 1] && t[j - 1] == literal;
                }
            }
        }
        matched = next;
    }
    matched[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARN: &str = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/$connect";

    fn decide(statements: Value) -> Decision {
        Policy::parse(&json!({ "Version": "2012-10-17", "Statement": statements }))
            .expect("valid policy")
            .evaluate(INVOKE_ACTION, ARN)
    }

    fn allow(resource: Value) -> Value {
        json!({"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": resource})
    }

    #[test]
    fn exact_resource_allows_and_deny_wins() {
        assert_eq!(decide(json!([allow(json!(ARN))])), Decision::Allow);
        let deny = json!({"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ARN});
        assert_eq!(decide(json!([deny])), Decision::ExplicitDeny);
        assert_eq!(
            decide(json!([allow(json!("*")), deny])),
            Decision::ExplicitDeny
        );
        assert_eq!(decide(json!([])), Decision::ImplicitDeny);
        // One statement object instead of an array, as IAM also allows.
        assert_eq!(decide(allow(json!(ARN))), Decision::Allow);
    }

    #[test]
    fn resources_match_with_iam_wildcards() {
        let allowed = [
            "*",
            "arn:aws:execute-api:*",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/*",
            "arn:aws:execute-api:*:*:abcdef1234/prod/$connect",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/$con*",
            "arn:aws:execute-api:us-*-1:123456789012:abcdef1234/*/$connect",
            "arn:aws:execute-api:us-east-?:123456789012:abcdef1234/prod/$connect",
        ];
        for resource in allowed {
            assert_eq!(
                decide(json!([allow(json!(resource))])),
                Decision::Allow,
                "{resource}"
            );
        }
        let mismatched = [
            // The REST habit of `{stage}/{method}/{path}`: $connect has no method segment (spec §6.3).
            "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/*/*",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/dev/$connect",
            "arn:aws:execute-api:us-east-1:123456789012:otherapi00/*",
            "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/prod/$CONNECT",
            // A `*` inside a segment does not run across colons.
            "arn:aws:execute-api:us*1234/prod/$connect",
            "arn:aws:execute-api:us-east-1?123456789012:abcdef1234/prod/$connect",
            "",
        ];
        for resource in mismatched {
            assert_eq!(
                decide(json!([allow(json!(resource))])),
                Decision::ImplicitDeny,
                "{resource}"
            );
        }
        assert_eq!(
            decide(json!([allow(json!([
                "arn:aws:execute-api:*:*:other/*",
                ARN
            ]))])),
            Decision::Allow
        );
    }

    #[test]
    fn actions_match_case_insensitively_and_other_actions_do_not_apply() {
        for action in [
            "execute-api:Invoke",
            "execute-api:*",
            "*",
            "Execute-API:invoke",
            "execute-api:Inv?ke",
        ] {
            let statement = json!({"Action": action, "Effect": "Allow", "Resource": "*"});
            assert_eq!(decide(json!([statement])), Decision::Allow, "{action}");
        }
        let other =
            json!({"Action": "execute-api:ManageConnections", "Effect": "Allow", "Resource": "*"});
        assert_eq!(decide(json!([other])), Decision::ImplicitDeny);
        let deny_other = json!({"Action": ["s3:*"], "Effect": "Deny", "Resource": "*"});
        assert_eq!(
            decide(json!([allow(json!("*")), deny_other])),
            Decision::Allow
        );
    }

    #[test]
    fn not_action_and_not_resource_invert_the_match() {
        let everything_but_other_apis = json!({"Action": "*", "Effect": "Allow", "NotResource": "arn:aws:execute-api:*:*:other/*"});
        assert_eq!(decide(json!([everything_but_other_apis])), Decision::Allow);
        let deny_all_but_prod = json!({"NotAction": "s3:*", "Effect": "Deny", "NotResource": ARN});
        assert_eq!(
            decide(json!([allow(json!("*")), deny_all_but_prod])),
            Decision::Allow
        );
        let deny_but_invoke =
            json!({"NotAction": "execute-api:Invoke", "Effect": "Deny", "Resource": "*"});
        assert_eq!(
            decide(json!([allow(json!("*")), deny_but_invoke])),
            Decision::Allow
        );
    }

    #[test]
    fn malformed_documents_are_invalid() {
        let cases = [
            json!(null),
            json!("Allow"),
            json!({"Version": "2012-10-17"}),
            json!({"Statement": "Allow"}),
            json!({"Statement": [42]}),
            json!({"Statement": [{"Action": "*", "Resource": "*"}]}),
            json!({"Statement": [{"Action": "*", "Effect": "allow", "Resource": "*"}]}),
            json!({"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
            json!({"Statement": [{"Action": "*", "NotAction": "s3:*", "Effect": "Allow", "Resource": "*"}]}),
            json!({"Statement": [{"Action": "*", "Effect": "Allow"}]}),
            json!({"Statement": [{"Action": "*", "Effect": "Allow", "Resource": 7}]}),
            json!({"Statement": [{"Action": "*", "Effect": "Allow", "Resource": ["*", 7]}]}),
            json!({"Statement": [{"Action": "*", "Effect": "Allow", "Resource": "*",
                                  "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}),
        ];
        for document in cases {
            assert!(Policy::parse(&document).is_err(), "{document}");
        }
    }

    #[test]
    fn wildcards_outside_arns_cross_everything() {
        assert!(wildcard_match("a*", "a:b:c", false));
        assert!(wildcard_match("a?c", "a:c", false));
        assert!(!wildcard_match("a*b", "a:b", true));
        assert!(wildcard_match("a*:b", "a:x:b", true));
        assert!(wildcard_match("", "", true));
        assert!(!wildcard_match("?", "", true));
    }
}
