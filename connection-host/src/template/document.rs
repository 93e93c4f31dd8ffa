//! Reading a template file into one JSON tree: YAML with CloudFormation's short-form tags
//! (`!Ref`, `!Sub`, `!GetAtt`, …) is rewritten to the long forms JSON templates use
//! (`{"Ref": …}`, `{"Fn::Sub": …}`), so the resolver handles a single shape.

use super::Fault;
use serde_json::{Map, Value};
use serde_yaml_ng::Value as Yaml;

/// The short-form tags CloudFormation defines, with their long-form keys. Knowing them all (not
/// only the ones the resolver evaluates) lets an unsupported function be reported by name where
/// it is used, and a misspelt tag be told apart from it.
const TAGS: &[(&str, &str)] = &[
    ("Ref", "Ref"),
    ("Condition", "Condition"),
    ("Sub", "Fn::Sub"),
    ("GetAtt", "Fn::GetAtt"),
    ("Join", "Fn::Join"),
    ("If", "Fn::If"),
    ("Select", "Fn::Select"),
    ("Split", "Fn::Split"),
    ("FindInMap", "Fn::FindInMap"),
    ("Equals", "Fn::Equals"),
    ("Not", "Fn::Not"),
    ("And", "Fn::And"),
    ("Or", "Fn::Or"),
    ("Base64", "Fn::Base64"),
    ("GetAZs", "Fn::GetAZs"),
    ("ImportValue", "Fn::ImportValue"),
    ("Cidr", "Fn::Cidr"),
    ("Transform", "Fn::Transform"),
    ("ToJsonString", "Fn::ToJsonString"),
    ("Length", "Fn::Length"),
];

/// Parses a template: JSON when the text starts with `{` (YAML parsers reject some valid JSON,
/// such as tab indentation), otherwise YAML.
pub(super) fn parse(text: &str) -> Result<Value, Fault> {
    let root = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| Fault::new("", format!("not valid JSON: {e}")))?
    } else {
        let yaml: Yaml = serde_yaml_ng::from_str(text)
            .map_err(|e| Fault::new("", format!("not valid YAML: {e}")))?;
        to_json(yaml, "")?
    };
    if !root.is_object() {
        return Err(Fault::new(
            "",
            "a template is a mapping with a Resources section",
        ));
    }
    Ok(root)
}

fn child(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn to_json(yaml: Yaml, at: &str) -> Result<Value, Fault> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .ok_or_else(|| Fault::new(at, format!("number {n} has no JSON form")))?
            }
        }
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let key = match key {
                    Yaml::String(s) => s,
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    other => {
                        return Err(Fault::new(
                            at,
                            format!("mapping keys must be strings, found {other:?}"),
                        ));
                    }
                };
                let value = to_json(value, &child(at, &key))?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
        Yaml::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let Some((_, long)) = TAGS.iter().find(|(short, _)| *short == name) else {
                return Err(Fault::new(
                    at,
                    format!(
                        "unknown tag {tag}: CloudFormation's short forms are !Ref, !Sub, !GetAtt, !Join, !If, …"
                    ),
                ));
            };
            let mut value = to_json(tagged.value, at)?;
            // `!GetAtt Logical.Attribute` is the one short form whose argument differs from the
            // long form's (`["Logical", "Attribute"]`).
            if *long == "Fn::GetAtt"
                && let Value::String(s) = &value
            {
                let (resource, attribute) = s.split_once('.').ok_or_else(|| {
                    Fault::new(at, format!("!GetAtt {s}: expected LogicalId.Attribute"))
                })?;
                value = Value::from(vec![resource, attribute]);
            }
            let mut map = Map::new();
            map.insert((*long).to_string(), value);
            Value::Object(map)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn short_forms_become_long_forms() {
        let v = parse(
            "A: !Ref X\nB: !GetAtt F.Arn\nC: !Sub 'a-${X}'\nD: !Join ['/', [x, !Ref Y]]\nE: !If [C, 1, 2]\n1: one\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "A": {"Ref": "X"},
                "B": {"Fn::GetAtt": ["F", "Arn"]},
                "C": {"Fn::Sub": "a-${X}"},
                "D": {"Fn::Join": ["/", ["x", {"Ref": "Y"}]]},
                "E": {"Fn::If": ["C", 1, 2]},
                "1": "one",
            })
        );
    }

    #[test]
    fn json_with_tabs_parses() {
        let v = parse("{\n\t\"Resources\": {\"A\": {\"Ref\": \"B\"}}\n}").unwrap();
        assert_eq!(v["Resources"]["A"]["Ref"], "B");
    }

    #[test]
    fn bad_input_is_an_error_with_a_location() {
        let e = parse("Resources:\n  R:\n    P: !Reff X\n").unwrap_err();
        assert_eq!(e.location, "Resources.R.P");
        assert!(e.reason.contains("!Reff"), "{}", e.reason);
        assert!(parse("- a\n- b\n").is_err());
        assert!(parse("a: [\n").unwrap_err().reason.contains("YAML"));
        assert!(parse("{\"a\": }").unwrap_err().reason.contains("JSON"));
        assert!(parse("A: !GetAtt NoDot\n").is_err());
    }
}
