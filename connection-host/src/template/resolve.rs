//! Evaluating the intrinsic functions a template's API definition uses.
//!
//! A reference to another resource cannot be evaluated the way CloudFormation does (there is no
//! deployed resource to take an ID or ARN from), so it stays symbolic: a [`Text`] is a string made
//! of literal pieces and resource references, and the caller decides what a reference means where
//! it appears (a route's `Target` names an integration, an `IntegrationUri` a function).
//! Parameters, pseudo parameters, mappings and conditions are evaluated.

use super::Fault;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A value after its intrinsic functions are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    /// JSON `null`, or a property removed with `AWS::NoValue`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(serde_json::Number),
    /// A string, possibly with resource references in it.
    Text(Text),
    /// A list.
    List(Vec<Val>),
    /// A mapping.
    Map(BTreeMap<String, Val>),
}

/// A string of literal pieces and resource references.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Text(pub(super) Vec<Piece>);

/// One piece of a [`Text`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    /// Literal characters.
    Literal(String),
    /// `!Ref Logical` (attribute `None`) or `!GetAtt Logical.Attribute`.
    Resource {
        /// The resource's logical ID.
        id: String,
        /// The attribute, for `!GetAtt` and `${Logical.Attribute}`.
        attribute: Option<String>,
    },
}

impl Text {
    pub(super) fn literal(s: impl Into<String>) -> Self {
        Self(vec![Piece::Literal(s.into())])
    }

    /// The string, when it holds no resource reference.
    pub(super) fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Resource { .. } => return None,
            }
        }
        Some(out)
    }

    /// The resources referred to, in order.
    pub(super) fn resources(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().filter_map(|p| match p {
            Piece::Resource { id, attribute } => Some((id.as_str(), attribute.as_deref())),
            Piece::Literal(_) => None,
        })
    }

    fn push_str(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Piece::Literal(last)) = self.0.last_mut() {
            last.push_str(s);
        } else {
            self.0.push(Piece::Literal(s.to_string()));
        }
    }

    fn append(&mut self, other: Text) {
        for piece in other.0 {
            match piece {
                Piece::Literal(s) => self.push_str(&s),
                resource => self.0.push(resource),
            }
        }
    }
}

impl Val {
    /// The value as a string when it is a scalar without resource references.
    pub(super) fn as_literal(&self) -> Option<String> {
        match self {
            Val::Text(t) => t.as_literal(),
            Val::Number(n) => Some(n.to_string()),
            Val::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The value as text: strings, and numbers and booleans in their written form.
    fn into_text(self) -> Option<Text> {
        match self {
            Val::Text(t) => Some(t),
            Val::Number(n) => Some(Text::literal(n.to_string())),
            Val::Bool(b) => Some(Text::literal(b.to_string())),
            _ => None,
        }
    }
}

/// Nesting beyond this is a cycle (conditions naming each other) or an absurd template.
const MAX_DEPTH: usize = 64;

/// What names mean while evaluating: parameters, pseudo parameters, resources, mappings and
/// conditions of one template.
pub(super) struct Scope<'t> {
    /// Parameter values: the override or the `Default`; `None` when neither exists.
    pub(super) parameters: BTreeMap<String, Option<Val>>,
    /// `AWS::Region`, `AWS::AccountId`, … as literals.
    pub(super) pseudo: BTreeMap<&'static str, String>,
    /// The template's `Resources`.
    pub(super) resources: &'t Map<String, Value>,
    /// The template's `Mappings`.
    pub(super) mappings: Option<&'t Map<String, Value>>,
    /// The template's `Conditions`.
    pub(super) conditions: Option<&'t Map<String, Value>>,
}

impl Scope<'_> {
    /// Evaluates `value`, found at `at` (for messages).
    pub(super) fn resolve(&self, value: &Value, at: &str) -> Result<Val, Fault> {
        self.eval(value, at, 0)
    }

    fn eval(&self, value: &Value, at: &str, depth: usize) -> Result<Val, Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::new(at, "nested too deeply"));
        }
        Ok(match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Number(n.clone()),
            Value::String(s) => Val::Text(Text::literal(s.clone())),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match self.eval(item, &format!("{at}[{i}]"), depth + 1)? {
                        Val::Null => {}
                        v => out.push(v),
                    }
                }
                Val::List(out)
            }
            Value::Object(map) => {
                if map.len() == 1 {
                    let (key, arg) = map.iter().next().expect("one entry");
                    if key == "Ref" || key.starts_with("Fn::") {
                        return self.function(key, arg, at, depth + 1);
                    }
                }
                let mut out = BTreeMap::new();
                for (key, item) in map {
                    match self.eval(item, &format!("{at}.{key}"), depth + 1)? {
                        Val::Null => {}
                        v => {
                            out.insert(key.clone(), v);
                        }
                    }
                }
                Val::Map(out)
            }
        })
    }

    fn function(&self, name: &str, arg: &Value, at: &str, depth: usize) -> Result<Val, Fault> {
        let at = &format!("{at} ({name})");
        let args = |n: usize| -> Result<&Vec<Value>, Fault> {
            match arg {
                Value::Array(items) if items.len() == n => Ok(items),
                _ => Err(Fault::new(
                    at,
                    format!("{name} takes a list of {n} arguments"),
                )),
            }
        };
        match name {
            "Ref" => {
                let Value::String(target) = arg else {
                    return Err(Fault::new(at, "Ref takes a logical ID or parameter name"));
                };
                self.reference(target, None, at)
            }
            "Fn::GetAtt" => {
                let (id, attribute) = match arg {
                    Value::Array(items) if items.len() == 2 => {
                        match (&items[0], self.eval(&items[1], at, depth)?.as_literal()) {
                            (Value::String(id), Some(attribute)) => (id.clone(), attribute),
                            _ => {
                                return Err(Fault::new(
                                    at,
                                    "Fn::GetAtt takes [LogicalId, Attribute]",
                                ));
                            }
                        }
                    }
                    Value::String(s) => match s.split_once('.') {
                        Some((id, attribute)) => (id.to_string(), attribute.to_string()),
                        None => return Err(Fault::new(at, "Fn::GetAtt takes LogicalId.Attribute")),
                    },
                    _ => return Err(Fault::new(at, "Fn::GetAtt takes [LogicalId, Attribute]")),
                };
                if !self.resources.contains_key(&id) {
                    return Err(Fault::new(at, format!("Fn::GetAtt: no resource {id}")));
                }
                Ok(Val::Text(Text(vec![Piece::Resource {
                    id,
                    attribute: Some(attribute),
                }])))
            }
            "Fn::Sub" => {
                let (template, variables) = match arg {
                    Value::String(s) => (s.as_str(), None),
                    Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
                        (Value::String(s), Value::Object(vars)) => (s.as_str(), Some(vars)),
                        _ => {
                            return Err(Fault::new(
                                at,
                                "Fn::Sub takes a string or [string, {variables}]",
                            ));
                        }
                    },
                    _ => {
                        return Err(Fault::new(
                            at,
                            "Fn::Sub takes a string or [string, {variables}]",
                        ));
                    }
                };
                self.substitute(template, variables, at, depth)
            }
            "Fn::Join" => {
                let items = args(2)?;
                let delimiter = match &items[0] {
                    Value::String(d) => d.clone(),
                    _ => return Err(Fault::new(at, "Fn::Join's delimiter must be a string")),
                };
                let Val::List(parts) = self.eval(&items[1], at, depth)? else {
                    return Err(Fault::new(at, "Fn::Join's second argument must be a list"));
                };
                let mut out = Text::default();
                for (i, part) in parts.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&delimiter);
                    }
                    let text = part
                        .into_text()
                        .ok_or_else(|| Fault::new(at, "Fn::Join joins strings only"))?;
                    out.append(text);
                }
                Ok(Val::Text(out))
            }
            "Fn::Select" => {
                let items = args(2)?;
                let index = self
                    .eval(&items[0], at, depth)?
                    .as_literal()
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| Fault::new(at, "Fn::Select's index must be a number"))?;
                let Val::List(list) = self.eval(&items[1], at, depth)? else {
                    return Err(Fault::new(
                        at,
                        "Fn::Select's second argument must be a list",
                    ));
                };
                let len = list.len();
                list.into_iter().nth(index).ok_or_else(|| {
                    Fault::new(
                        at,
                        format!("Fn::Select: index {index} is past the list's {len} items"),
                    )
                })
            }
            "Fn::Split" => {
                let items = args(2)?;
                let (Some(delimiter), Some(text)) = (
                    self.eval(&items[0], at, depth)?.as_literal(),
                    self.eval(&items[1], at, depth)?.as_literal(),
                ) else {
                    return Err(Fault::new(
                        at,
                        "Fn::Split takes a delimiter and a string without resource references",
                    ));
                };
                if delimiter.is_empty() {
                    return Err(Fault::new(at, "Fn::Split's delimiter must not be empty"));
                }
                Ok(Val::List(
                    text.split(delimiter.as_str())
                        .map(|s| Val::Text(Text::literal(s)))
                        .collect(),
                ))
            }
            "Fn::If" => {
                let items = args(3)?;
                let Value::String(condition) = &items[0] else {
                    return Err(Fault::new(at, "Fn::If takes [ConditionName, then, else]"));
                };
                let branch = if self.condition(condition, at, depth)? {
                    &items[1]
                } else {
                    &items[2]
                };
                self.eval(branch, at, depth)
            }
            "Fn::FindInMap" => {
                let items = args(3)?;
                let mut keys = Vec::new();
                for item in items {
                    keys.push(self.eval(item, at, depth)?.as_literal().ok_or_else(|| {
                        Fault::new(at, "Fn::FindInMap's arguments must be strings")
                    })?);
                }
                let found = self
                    .mappings
                    .and_then(|m| m.get(&keys[0]))
                    .and_then(|m| m.get(&keys[1]))
                    .and_then(|m| m.get(&keys[2]))
                    .ok_or_else(|| {
                        Fault::new(
                            at,
                            format!(
                                "Fn::FindInMap: Mappings has no {}.{}.{}",
                                keys[0], keys[1], keys[2]
                            ),
                        )
                    })?;
                self.eval(found, at, depth)
            }
            other => Err(Fault::new(
                at,
                format!(
                    "{other} is not supported here (the template loader evaluates Ref, Fn::Sub, Fn::GetAtt, Fn::Join, Fn::Select, Fn::Split, Fn::If and Fn::FindInMap)"
                ),
            )),
        }
    }

    /// `Ref` and `${name}`: a parameter, a pseudo parameter or a resource.
    fn reference(&self, name: &str, attribute: Option<String>, at: &str) -> Result<Val, Fault> {
        if attribute.is_none() {
            if name == "AWS::NoValue" {
                return Ok(Val::Null);
            }
            if let Some(value) = self.pseudo.get(name) {
                return Ok(Val::Text(Text::literal(value.clone())));
            }
            if let Some(value) = self.parameters.get(name) {
                return value.clone().ok_or_else(|| {
                    Fault::new(
                        at,
                        format!("parameter {name} has no Default: give it a value in [template.parameters]"),
                    )
                });
            }
            if name.starts_with("AWS::") {
                return Err(Fault::new(
                    at,
                    format!("pseudo parameter {name} is not supported"),
                ));
            }
        }
        if self.resources.contains_key(name) {
            return Ok(Val::Text(Text(vec![Piece::Resource {
                id: name.to_string(),
                attribute,
            }])));
        }
        Err(Fault::new(
            at,
            format!("no parameter or resource named {name}"),
        ))
    }

    /// `Fn::Sub`: `${Name}`, `${Logical.Attribute}`, `${AWS::Region}`, `${!Literal}`.
    fn substitute(
        &self,
        template: &str,
        variables: Option<&Map<String, Value>>,
        at: &str,
        depth: usize,
    ) -> Result<Val, Fault> {
        let mut out = Text::default();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            if let Some(literal) = after.strip_prefix('!') {
                out.push_str("${");
                rest = literal;
                continue;
            }
            let end = after
                .find('}')
                .ok_or_else(|| Fault::new(at, format!("Fn::Sub: unclosed ${{ in {template:?}")))?;
            let name = after[..end].trim();
            let value = match variables.and_then(|v| v.get(name)) {
                Some(value) => self.eval(value, at, depth)?,
                None => match name.split_once('.') {
                    Some((id, attribute)) if !name.starts_with("AWS::") => {
                        if !self.resources.contains_key(id) {
                            return Err(Fault::new(
                                at,
                                format!("Fn::Sub: no resource {id} for ${{{name}}}"),
                            ));
                        }
                        self.reference(id, Some(attribute.to_string()), at)?
                    }
                    _ => self.reference(name, None, at)?,
                },
            };
            let text = value
                .into_text()
                .ok_or_else(|| Fault::new(at, format!("Fn::Sub: ${{{name}}} is not a string")))?;
            out.append(text);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Val::Text(out))
    }

    /// Evaluates the condition `name` from the `Conditions` section.
    pub(super) fn condition(&self, name: &str, at: &str, depth: usize) -> Result<bool, Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::new(
                at,
                "conditions nested too deeply (do they refer to each other?)",
            ));
        }
        let expression = self
            .conditions
            .and_then(|c| c.get(name))
            .ok_or_else(|| Fault::new(at, format!("no condition named {name} in Conditions")))?;
        self.condition_expression(expression, &format!("Conditions.{name}"), depth + 1)
    }

    fn condition_expression(&self, value: &Value, at: &str, depth: usize) -> Result<bool, Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::new(
                at,
                "conditions nested too deeply (do they refer to each other?)",
            ));
        }
        let invalid = || {
            Fault::new(
                at,
                "a condition is Fn::Equals, Fn::Not, Fn::And, Fn::Or or Condition",
            )
        };
        let Value::Object(map) = value else {
            return match value {
                Value::Bool(b) => Ok(*b),
                _ => Err(invalid()),
            };
        };
        let Some((key, arg)) = map.iter().next().filter(|_| map.len() == 1) else {
            return Err(invalid());
        };
        let list = || match arg {
            Value::Array(items) => Ok(items),
            _ => Err(Fault::new(at, format!("{key} takes a list"))),
        };
        match key.as_str() {
            "Condition" => match arg {
                Value::String(name) => self.condition(name, at, depth),
                _ => Err(invalid()),
            },
            "Fn::Equals" => {
                let items = list()?;
                if items.len() != 2 {
                    return Err(Fault::new(at, "Fn::Equals takes two values"));
                }
                let a = self.eval(&items[0], at, depth)?.as_literal();
                let b = self.eval(&items[1], at, depth)?.as_literal();
                match (a, b) {
                    (Some(a), Some(b)) => Ok(a == b),
                    _ => Err(Fault::new(
                        at,
                        "Fn::Equals compares strings without resource references",
                    )),
                }
            }
            "Fn::Not" => match list()?.as_slice() {
                [one] => Ok(!self.condition_expression(one, at, depth + 1)?),
                _ => Err(Fault::new(at, "Fn::Not takes one condition")),
            },
            "Fn::And" | "Fn::Or" => {
                let mut results = Vec::new();
                for item in list()? {
                    results.push(self.condition_expression(item, at, depth + 1)?);
                }
                Ok(if key == "Fn::And" {
                    results.iter().all(|r| *r)
                } else {
                    results.iter().any(|r| *r)
                })
            }
            _ => Err(invalid()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_scope<T>(template: Value, f: impl FnOnce(&Scope) -> T) -> T {
        let resources = template["Resources"].as_object().unwrap().clone();
        let mut parameters = BTreeMap::new();
        parameters.insert("Stage".to_string(), Some(Val::Text(Text::literal("prod"))));
        parameters.insert("Required".to_string(), None);
        let scope = Scope {
            parameters,
            pseudo: [("AWS::Region", "eu-west-1".to_string())].into(),
            resources: &resources,
            mappings: template["Mappings"].as_object(),
            conditions: template["Conditions"].as_object(),
        };
        f(&scope)
    }

    fn fixture() -> Value {
        json!({
            "Resources": {"Fn": {}, "Integration": {}},
            "Mappings": {"Sizes": {"prod": {"Memory": 512}}},
            "Conditions": {
                "IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
                "NotProd": {"Fn::Not": [{"Condition": "IsProd"}]},
                "Loop": {"Condition": "Loop"},
            },
        })
    }

    fn resource(id: &str, attribute: Option<&str>) -> Piece {
        Piece::Resource {
            id: id.into(),
            attribute: attribute.map(Into::into),
        }
    }

    #[test]
    fn sub_mixes_literals_parameters_pseudo_parameters_and_resources() {
        with_scope(fixture(), |s| {
            let v = s
                .resolve(
                    &json!({"Fn::Sub": "arn:aws:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${Fn.Arn}/invocations"}),
                    "x",
                )
                .unwrap();
            assert_eq!(
                v,
                Val::Text(Text(vec![
                    Piece::Literal(
                        "arn:aws:apigateway:eu-west-1:lambda:path/2015-03-31/functions/".into()
                    ),
                    resource("Fn", Some("Arn")),
                    Piece::Literal("/invocations".into()),
                ]))
            );
            let v = s
                .resolve(&json!({"Fn::Sub": ["${Stage}-${X}-${!Literal}", {"X": {"Ref": "Integration"}}]}), "x")
                .unwrap();
            assert_eq!(
                v,
                Val::Text(Text(vec![
                    Piece::Literal("prod-".into()),
                    resource("Integration", None),
                    Piece::Literal("-${Literal}".into()),
                ]))
            );
        });
    }

    #[test]
    fn join_select_split_if_and_find_in_map() {
        with_scope(fixture(), |s| {
            let join = s
                .resolve(
                    &json!({"Fn::Join": ["/", ["integrations", {"Ref": "Integration"}]]}),
                    "x",
                )
                .unwrap();
            assert_eq!(
                join,
                Val::Text(Text(vec![
                    Piece::Literal("integrations/".into()),
                    resource("Integration", None)
                ]))
            );
            let select = s
                .resolve(
                    &json!({"Fn::Select": [1, {"Fn::Split": [",", "a,b,c"]}]}),
                    "x",
                )
                .unwrap();
            assert_eq!(select.as_literal().as_deref(), Some("b"));
            let branch = s
                .resolve(&json!({"Fn::If": ["NotProd", "small", {"Fn::FindInMap": ["Sizes", {"Ref": "Stage"}, "Memory"]}]}), "x")
                .unwrap();
            assert_eq!(branch.as_literal().as_deref(), Some("512"));
            let no_value = s
                .resolve(
                    &json!({"A": {"Ref": "AWS::NoValue"}, "B": [1, {"Ref": "AWS::NoValue"}]}),
                    "x",
                )
                .unwrap();
            assert_eq!(
                no_value,
                Val::Map([("B".to_string(), Val::List(vec![Val::Number(1.into())]))].into())
            );
        });
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        with_scope(fixture(), |s| {
            let cases = [
                (
                    json!({"Ref": "Nope"}),
                    "no parameter or resource named Nope",
                ),
                (json!({"Ref": "Required"}), "[template.parameters]"),
                (json!({"Fn::GetAtt": ["Nope", "Arn"]}), "no resource Nope"),
                (json!({"Fn::Sub": "${Nope.Arn}"}), "no resource Nope"),
                (json!({"Fn::Sub": "${Unclosed"}), "unclosed"),
                (
                    json!({"Fn::ImportValue": "Shared"}),
                    "Fn::ImportValue is not supported",
                ),
                (json!({"Fn::If": ["Loop", 1, 2]}), "too deeply"),
                (json!({"Fn::Join": ["/", "notalist"]}), "must be a list"),
                (json!({"Ref": "AWS::StackId"}), "not supported"),
            ];
            for (value, expected) in cases {
                let fault = s.resolve(&value, "Resources.R.Properties.P").unwrap_err();
                // A cycle is reported where the conditions are defined.
                assert!(
                    fault.location.starts_with("Resources.R.Properties.P")
                        || fault.location == "Conditions.Loop",
                    "{fault:?}"
                );
                assert!(fault.reason.contains(expected), "{value}: {fault:?}");
            }
        });
    }
}
