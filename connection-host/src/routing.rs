//! API Gateway WebSocket route selection: parsing a `routeSelectionExpression`
//! and picking the route key for an incoming message.
//!
//! The expression is parsed once when the configuration is loaded, so every
//! message only pays for parsing its own body (and only when the expression
//! actually refers to it).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde_json::Value;

pub mod table;

/// Route used when nothing else matches.
const DEFAULT_ROUTE: &str = "$default";
/// Lifecycle routes that a message body must never be able to trigger.
const RESERVED_ROUTES: [&str; 2] = ["$connect", "$disconnect"];
/// The only variable source API Gateway supports in route selection.
const BODY_PREFIX: &str = "request.body";

/// A parsed API Gateway route selection expression.
///
/// Syntax (as in AWS):
/// - `$request.body.<path>` or `${request.body.<path>}` is replaced by the
///   value at `<path>` in the JSON message body; literals may surround and
///   separate variables (`${request.body.service}/${request.body.action}`).
/// - `<path>` is a sequence of `.key`, `[index]` and `['quoted key']` /
///   `["quoted key"]` steps. Inside quotes a backslash escapes the next
///   character.
/// - An unbraced variable ends at the first character that is not an
///   alphanumeric, `_`, `-`, a `.` step or a `[...]` step; use braces to put
///   any other literal (or a `-`) right after a variable, or to use keys with
///   other characters (`${request.body.my key}`).
/// - `\$` is a literal `$` (so `\$default` evaluates to `$default`); a
///   backslash before anything else is kept as is.
/// - The result is evaluated once: variable values are never re-expanded.
///
/// Values are stringified: strings as-is, numbers and booleans as their JSON
/// text, `null` and missing paths as `""`, arrays as `[a, b]` (elements
/// stringified the same way) and objects as compact JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSelectionExpression {
    source: String,
    /// Adjacent literals are merged, so a variable-free expression is at most
    /// one literal and can be answered without looking at the body.
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// A path below `request.body`; never empty.
    Body(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Why a route selection expression was rejected at configuration load.
///
/// Every variant carries the byte offset into the expression so a bad
/// configuration can be fixed without guessing.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExpressionError {
    /// API Gateway requires a non-empty expression; an empty one would send
    /// every message to `$default` silently.
    #[error("route selection expression is empty")]
    Empty,
    /// `${` without a matching `}`.
    #[error("unterminated `${{` at byte {offset}: missing closing `}}`")]
    UnterminatedBrace {
        /// Offset of the `$`.
        offset: usize,
    },
    /// `${}` or a `$` not followed by a variable name.
    #[error("empty variable at byte {offset} (write `\\$` for a literal dollar sign)")]
    EmptyVariable {
        /// Offset of the `$`.
        offset: usize,
    },
    /// A variable other than `request.body...`, e.g. `$context.foo`.
    #[error(
        "unsupported variable `${name}` at byte {offset}: only `$request.body.<path>` is supported \
         (write `\\$` for a literal dollar sign)"
    )]
    UnsupportedVariable {
        /// The variable name as written, without `$` and braces.
        name: String,
        /// Offset of the `$`.
        offset: usize,
    },
    /// `$request.body` without a path into the body.
    #[error("`$request.body` at byte {offset} needs a path, e.g. `$request.body.action`")]
    MissingBodyPath {
        /// Offset of the `$`.
        offset: usize,
    },
    /// A malformed path step, e.g. `$request.body.a..b` or `$request.body[x]`.
    #[error("invalid path at byte {offset}: {reason}")]
    InvalidPath {
        /// Offset of the offending character.
        offset: usize,
        /// What was expected there.
        reason: &'static str,
    },
}

impl RouteSelectionExpression {
    /// Parses an expression; done once at configuration load so evaluation is
    /// a walk over pre-split segments.
    pub fn parse(expr: &str) -> Result<Self, ExpressionError> {
        if expr.is_empty() {
            return Err(ExpressionError::Empty);
        }
        let mut parser = Parser { src: expr, pos: 0 };
        let mut segments = Vec::new();
        let mut literal = String::new();
        while let Some(c) = parser.peek() {
            match c {
                '\\' if parser.peek_at(1) == Some('$') => {
                    literal.push('$');
                    parser.pos += 2;
                }
                '$' => {
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Body(parser.variable()?));
                }
                _ => {
                    literal.push(c);
                    parser.pos += c.len_utf8();
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Self {
            source: expr.to_owned(),
            segments,
        })
    }

    /// The source text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Evaluates against a message body; None when the body is needed but is not a JSON object.
    ///
    /// The body is only parsed when the expression contains a variable, so a
    /// literal expression works for binary or non-JSON messages too.
    pub fn evaluate(&self, body: &str) -> Option<String> {
        match self.segments.as_slice() {
            [] => Some(String::new()),
            [Segment::Literal(literal)] => Some(literal.clone()),
            // The common `$request.body.action` case: move the value out of
            // the parsed body instead of copying it.
            [Segment::Body(path)] => {
                let value = take_path(parse_object(body)?, path);
                Some(value.map(into_string).unwrap_or_default())
            }
            segments => {
                let root = parse_object(body)?;
                let mut out = String::new();
                for segment in segments {
                    match segment {
                        Segment::Literal(literal) => out.push_str(literal),
                        Segment::Body(path) => {
                            if let Some(value) = lookup(&root, path) {
                                write_value(&mut out, value);
                            }
                        }
                    }
                }
                Some(out)
            }
        }
    }
}

impl FromStr for RouteSelectionExpression {
    type Err = ExpressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RouteSelectionExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl serde::Serialize for RouteSelectionExpression {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> serde::Deserialize<'de> for RouteSelectionExpression {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Self::parse(&source).map_err(serde::de::Error::custom)
    }
}

/// Picks the route key for a message. `has_route(key)` tells whether a route with that key is configured.
/// Returns None when nothing matches and there is no `$default` route.
///
/// The evaluated value may never select `$connect` or `$disconnect`: those
/// are lifecycle events, and letting a client trigger them with a crafted
/// message would let it fake connects and disconnects.
pub fn select_route(
    expr: &RouteSelectionExpression,
    body: &str,
    has_route: impl Fn(&str) -> bool,
) -> Option<Cow<'static, str>> {
    expr.evaluate(body)
        .filter(|key| !RESERVED_ROUTES.contains(&key.as_str()) && has_route(key))
        .map(Cow::Owned)
        .or_else(|| has_route(DEFAULT_ROUTE).then_some(Cow::Borrowed(DEFAULT_ROUTE)))
}

/// Only a JSON object can be navigated by `request.body.<path>`; anything
/// else falls back to `$default`, as in API Gateway.
fn parse_object(body: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(body) {
        Ok(value @ Value::Object(_)) => Some(value),
        _ => None,
    }
}

fn lookup<'v>(root: &'v Value, path: &[Step]) -> Option<&'v Value> {
    path.iter()
        .try_fold(root, |value, step| match (step, value) {
            (Step::Key(key), Value::Object(map)) => map.get(key),
            (Step::Index(index), Value::Array(items)) => items.get(*index),
            _ => None,
        })
}

/// Owned variant of [`lookup`], for when the body is thrown away afterwards.
fn take_path(root: Value, path: &[Step]) -> Option<Value> {
    path.iter()
        .try_fold(root, |value, step| match (step, value) {
            (Step::Key(key), Value::Object(mut map)) => map.remove(key),
            (Step::Index(index), Value::Array(mut items)) if *index < items.len() => {
                Some(items.swap_remove(*index))
            }
            _ => None,
        })
}

fn into_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => {
            let mut out = String::new();
            write_value(&mut out, &other);
            out
        }
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            // Writing into a String cannot fail.
            let _ = write!(out, "{n}");
        }
        Value::String(s) => out.push_str(s),
        // AWS: "an array of two elements ... will be presented as the string
        // [item1, item2]".
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Characters an unbraced variable's key may contain.
fn is_bare_key_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

/// Characters a braced variable's key may contain: anything that does not
/// start a step or close the variable.
fn is_braced_key_char(c: char) -> bool {
    !matches!(c, '.' | '[' | ']' | '}')
}

struct Parser<'s> {
    src: &'s str,
    pos: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        let len = self
            .rest()
            .find(|c: char| !pred(c))
            .unwrap_or(self.rest().len());
        self.pos += len;
        &self.src[start..self.pos]
    }

    /// Parses a variable starting at the `$` under the cursor.
    fn variable(&mut self) -> Result<Vec<Step>, ExpressionError> {
        let dollar = self.pos;
        self.pos += 1;
        let braced = self.peek() == Some('{');
        if braced {
            self.pos += 1;
            if self.peek() == Some('}') {
                return Err(ExpressionError::EmptyVariable { offset: dollar });
            }
            if self.peek().is_none() {
                return Err(ExpressionError::UnterminatedBrace { offset: dollar });
            }
        } else if !self.peek().is_some_and(is_bare_key_char) {
            return Err(ExpressionError::EmptyVariable { offset: dollar });
        }

        let name_start = self.pos;
        let after_prefix = self
            .rest()
            .strip_prefix(BODY_PREFIX)
            .map(|after| after.chars().next());
        let is_body = match after_prefix {
            Some(None | Some('.' | '[')) => true,
            Some(Some('}')) => braced,
            Some(Some(c)) => !braced && !is_bare_key_char(c),
            None => false,
        };
        if !is_body {
            let name = if braced {
                let Some(len) = self.rest().find('}') else {
                    return Err(ExpressionError::UnterminatedBrace { offset: dollar });
                };
                &self.src[name_start..name_start + len]
            } else {
                self.take_while(|c| is_bare_key_char(c) || c == '.')
            };
            return Err(ExpressionError::UnsupportedVariable {
                name: name.to_owned(),
                offset: dollar,
            });
        }
        self.pos += BODY_PREFIX.len();

        let path = self.steps(braced)?;
        if braced {
            match self.peek() {
                Some('}') => self.pos += 1,
                None => return Err(ExpressionError::UnterminatedBrace { offset: dollar }),
                Some(_) => {
                    return Err(ExpressionError::InvalidPath {
                        offset: self.pos,
                        reason: "unexpected character; expected `.`, `[` or `}`",
                    });
                }
            }
        }
        if path.is_empty() {
            return Err(ExpressionError::MissingBodyPath { offset: dollar });
        }
        Ok(path)
    }

    fn steps(&mut self, braced: bool) -> Result<Vec<Step>, ExpressionError> {
        let key_char: fn(char) -> bool = if braced {
            is_braced_key_char
        } else {
            is_bare_key_char
        };
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some('.') => {
                    self.pos += 1;
                    let key = self.take_while(key_char);
                    if key.is_empty() {
                        return Err(ExpressionError::InvalidPath {
                            offset: self.pos,
                            reason: "expected a key after `.`",
                        });
                    }
                    steps.push(Step::Key(key.to_owned()));
                }
                Some('[') => steps.push(self.bracket()?),
                _ => return Ok(steps),
            }
        }
    }

    /// Parses `[123]`, `['key']` or `["key"]` starting at the `[`.
    fn bracket(&mut self) -> Result<Step, ExpressionError> {
        let open = self.pos;
        self.pos += 1;
        let step = match self.peek() {
            Some('0'..='9') => {
                let digits_at = self.pos;
                let digits = self.take_while(|c| c.is_ascii_digit());
                let index = digits.parse().map_err(|_| ExpressionError::InvalidPath {
                    offset: digits_at,
                    reason: "array index is too large",
                })?;
                Step::Index(index)
            }
            Some(quote @ ('\'' | '"')) => {
                self.pos += 1;
                let mut key = String::new();
                let mut chars = self.rest().char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, c)) if c == quote => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, escaped)) => key.push(escaped),
                            None => break usize::MAX,
                        },
                        Some((_, c)) => key.push(c),
                        None => break usize::MAX,
                    }
                };
                if end == usize::MAX {
                    return Err(ExpressionError::InvalidPath {
                        offset: open,
                        reason: "unterminated quoted key",
                    });
                }
                self.pos += end + quote.len_utf8();
                Step::Key(key)
            }
            _ => {
                return Err(ExpressionError::InvalidPath {
                    offset: self.pos,
                    reason: "expected an array index or a quoted key after `[`",
                });
            }
        };
        if self.peek() != Some(']') {
            return Err(ExpressionError::InvalidPath {
                offset: self.pos,
                reason: "expected `]`",
            });
        }
        self.pos += 1;
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_BODY: &str = r#"{"service":"chat","action":"join","data":{"room":"room1234"}}"#;

    fn eval(expr: &str, body: &str) -> Option<String> {
        RouteSelectionExpression::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .evaluate(body)
    }

    fn err(expr: &str) -> ExpressionError {
        RouteSelectionExpression::parse(expr).expect_err(expr)
    }

    fn select(expr: &str, body: &str, routes: &[&str]) -> Option<String> {
        let expr = RouteSelectionExpression::parse(expr).unwrap();
        select_route(&expr, body, |key| routes.contains(&key)).map(Cow::into_owned)
    }

    #[test]
    fn documented_table() {
        let table = [
            ("$request.body.action", "join"),
            ("${request.body.action}", "join"),
            (
                "${request.body.service}/${request.body.action}",
                "chat/join",
            ),
            (
                "${request.body.action}-${request.body.invalidPath}",
                "join-",
            ),
            ("action", "action"),
            ("\\$default", "$default"),
        ];
        for (expr, expected) in table {
            assert_eq!(eval(expr, DOC_BODY).as_deref(), Some(expected), "{expr}");
        }
    }

    #[test]
    fn nested_paths() {
        assert_eq!(
            eval("$request.body.service.do", r#"{"service":{"do":"echo"}}"#).as_deref(),
            Some("echo")
        );
        assert_eq!(
            eval("$request.body.data.room", DOC_BODY).as_deref(),
            Some("room1234")
        );
        assert_eq!(
            eval("${request.body.a.b.c}!", r#"{"a":{"b":{"c":"deep"}}}"#).as_deref(),
            Some("deep!")
        );
    }

    #[test]
    fn brackets_and_quoted_keys() {
        let body = r#"{"items":["x",{"k":"v"}],"my key":"spaced","a]b":"odd","q'k":1}"#;
        assert_eq!(eval("$request.body.items[0]", body).as_deref(), Some("x"));
        assert_eq!(eval("$request.body.items[1].k", body).as_deref(), Some("v"));
        assert_eq!(eval("$request.body.items[2]", body).as_deref(), Some(""));
        assert_eq!(
            eval("$request.body['my key']", body).as_deref(),
            Some("spaced")
        );
        assert_eq!(
            eval(r#"${request.body["a]b"]}"#, body).as_deref(),
            Some("odd")
        );
        assert_eq!(eval(r"$request.body['q\'k']", body).as_deref(), Some("1"));
        assert_eq!(
            eval("${request.body.my key}", body).as_deref(),
            Some("spaced")
        );
        // An index does not address object keys, nor a key array elements.
        assert_eq!(
            eval("$request.body[0]", r#"{"0":"zero"}"#).as_deref(),
            Some("")
        );
        assert_eq!(eval("$request.body.items.0", body).as_deref(), Some(""));
    }

    #[test]
    fn unbraced_variable_ends_at_non_path_character() {
        let body = r#"{"a":"x","b":"y","my-key":"z"}"#;
        assert_eq!(
            eval("$request.body.a/$request.body.b", body).as_deref(),
            Some("x/y")
        );
        assert_eq!(eval("($request.body.a)", body).as_deref(), Some("(x)"));
        assert_eq!(eval("$request.body.my-key", body).as_deref(), Some("z"));
        assert_eq!(
            eval("$request.body.a:$request.body.b", body).as_deref(),
            Some("x:y")
        );
    }

    #[test]
    fn stringification() {
        let body = r#"{"i":5,"f":1.5,"neg":-3,"t":true,"f2":false,"n":null,
            "arr":["a",1,true,null,["b"],{"k":"v"}],"two":["item1","item2"],"empty":[],
            "obj":{"k":"v","n":[1,2]}}"#;
        let cases = [
            ("i", "5"),
            ("f", "1.5"),
            ("neg", "-3"),
            ("t", "true"),
            ("f2", "false"),
            ("n", ""),
            ("arr", r#"[a, 1, true, , [b], {"k":"v"}]"#),
            ("two", "[item1, item2]"),
            ("empty", "[]"),
            ("obj", r#"{"k":"v","n":[1,2]}"#),
        ];
        for (key, expected) in cases {
            // Both the single-variable (owned) and the mixed (borrowed) paths.
            let single = format!("$request.body.{key}");
            let mixed = format!("<${{request.body.{key}}}>");
            assert_eq!(eval(&single, body).as_deref(), Some(expected), "{single}");
            assert_eq!(eval(&mixed, body), Some(format!("<{expected}>")), "{mixed}");
        }
    }

    #[test]
    fn values_are_not_re_evaluated() {
        let body = r#"{"a":"$request.body.b","b":"no"}"#;
        assert_eq!(
            eval("$request.body.a", body).as_deref(),
            Some("$request.body.b")
        );
    }

    #[test]
    fn missing_path_is_empty() {
        assert_eq!(eval("$request.body.nope", DOC_BODY).as_deref(), Some(""));
        assert_eq!(
            eval("$request.body.action.deeper", DOC_BODY).as_deref(),
            Some("")
        );
        assert_eq!(
            eval("x${request.body.nope}y", DOC_BODY).as_deref(),
            Some("xy")
        );
    }

    #[test]
    fn non_object_bodies_cannot_be_evaluated() {
        for body in [
            "not json",
            "",
            "\"join\"",
            "5",
            "[1,2]",
            "null",
            "{\"action\":",
        ] {
            assert_eq!(eval("$request.body.action", body), None, "{body:?}");
            assert_eq!(eval("a/${request.body.action}", body), None, "{body:?}");
            assert_eq!(
                select("$request.body.action", body, &["join", "$default"]).as_deref(),
                Some("$default"),
                "{body:?}"
            );
            assert_eq!(
                select("$request.body.action", body, &["join"]),
                None,
                "{body:?}"
            );
        }
    }

    #[test]
    fn literal_expression_ignores_body() {
        assert_eq!(
            eval("action", "\u{0}binary garbage").as_deref(),
            Some("action")
        );
        assert_eq!(eval("\\$default", "[1]").as_deref(), Some("$default"));
        assert_eq!(
            select("action", "not json", &["action", "$default"]).as_deref(),
            Some("action")
        );
        assert_eq!(
            select("\\$default", "not json", &["$default"]).as_deref(),
            Some("$default")
        );
    }

    #[test]
    fn selects_exact_route_then_default() {
        let routes = ["join", "$default"];
        assert_eq!(
            select("$request.body.action", DOC_BODY, &routes).as_deref(),
            Some("join")
        );
        let body = r#"{"action":"leave"}"#;
        assert_eq!(
            select("$request.body.action", body, &routes).as_deref(),
            Some("$default")
        );
        // Case-sensitive.
        let body = r#"{"action":"JOIN"}"#;
        assert_eq!(
            select("$request.body.action", body, &routes).as_deref(),
            Some("$default")
        );
        assert_eq!(
            select(
                "${request.body.service}/${request.body.action}",
                DOC_BODY,
                &["chat/join"]
            )
            .as_deref(),
            Some("chat/join")
        );
    }

    #[test]
    fn lifecycle_routes_are_never_selected() {
        let all = ["$connect", "$disconnect", "$default"];
        for action in ["$connect", "$disconnect"] {
            let body = format!(r#"{{"action":"{action}"}}"#);
            assert_eq!(
                select("$request.body.action", &body, &all).as_deref(),
                Some("$default")
            );
            assert_eq!(select("$request.body.action", &body, &all[..2]), None);
        }
        assert_eq!(select("\\$connect", "", &all).as_deref(), Some("$default"));
    }

    #[test]
    fn no_match_without_default_is_none() {
        assert_eq!(select("$request.body.action", DOC_BODY, &["leave"]), None);
        assert_eq!(select("$request.body.action", DOC_BODY, &[]), None);
        assert_eq!(select("$request.body.nope", DOC_BODY, &["join"]), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            eval("\\$request.body.action", DOC_BODY).as_deref(),
            Some("$request.body.action")
        );
        assert_eq!(
            eval("cost\\$:$request.body.action", DOC_BODY).as_deref(),
            Some("cost$:join")
        );
        // A backslash only escapes a following `$`.
        assert_eq!(eval("a\\b", "").as_deref(), Some("a\\b"));
        assert_eq!(
            eval("\\\\$request.body.action", DOC_BODY).as_deref(),
            Some("\\$request.body.action")
        );
    }

    #[test]
    fn parse_errors_report_offsets() {
        use ExpressionError::*;
        assert_eq!(err(""), Empty);
        assert_eq!(
            err("ab${request.body.action"),
            UnterminatedBrace { offset: 2 }
        );
        assert_eq!(err("${"), UnterminatedBrace { offset: 0 });
        assert_eq!(err("x${context.foo"), UnterminatedBrace { offset: 1 });
        assert_eq!(err("a${}"), EmptyVariable { offset: 1 });
        assert_eq!(err("a$"), EmptyVariable { offset: 1 });
        assert_eq!(err("$ x"), EmptyVariable { offset: 0 });
        assert_eq!(
            err("x/$context.foo"),
            UnsupportedVariable {
                name: "context.foo".into(),
                offset: 2
            }
        );
        assert_eq!(
            err("${request.header.x}"),
            UnsupportedVariable {
                name: "request.header.x".into(),
                offset: 0
            }
        );
        assert_eq!(
            err("$request.bodyx.a"),
            UnsupportedVariable {
                name: "request.bodyx.a".into(),
                offset: 0
            }
        );
        assert_eq!(
            err("$default"),
            UnsupportedVariable {
                name: "default".into(),
                offset: 0
            }
        );
        assert_eq!(err("$request.body"), MissingBodyPath { offset: 0 });
        assert_eq!(err("ab${request.body}"), MissingBodyPath { offset: 2 });
        assert_eq!(err("$request.body/x"), MissingBodyPath { offset: 0 });
        assert!(matches!(
            err("$request.body."),
            InvalidPath { offset: 14, .. }
        ));
        assert!(matches!(
            err("$request.body.a..b"),
            InvalidPath { offset: 16, .. }
        ));
        assert!(matches!(
            err("$request.body[x]"),
            InvalidPath { offset: 14, .. }
        ));
        assert!(matches!(
            err("$request.body[0"),
            InvalidPath { offset: 15, .. }
        ));
        assert!(matches!(
            err("$request.body['a]"),
            InvalidPath { offset: 13, .. }
        ));
        assert!(matches!(
            err("${request.body.a]}"),
            InvalidPath { offset: 16, .. }
        ));
        assert!(matches!(
            err("$request.body[99999999999999999999999]"),
            InvalidPath { offset: 14, .. }
        ));
    }

    #[test]
    fn error_messages_name_problem_and_offset() {
        let message = err("a/$context.foo").to_string();
        assert!(
            message.contains("context.foo") && message.contains("byte 2"),
            "{message}"
        );
        let message = err("ab${request.body").to_string();
        assert!(
            message.contains("unterminated") && message.contains("byte 2"),
            "{message}"
        );
    }

    #[test]
    fn source_round_trips() {
        let source = "${request.body.service}/${request.body.action}";
        let expr: RouteSelectionExpression = source.parse().unwrap();
        assert_eq!(expr.as_str(), source);
        assert_eq!(expr.to_string(), source);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let expr: RouteSelectionExpression =
            serde_json::from_str(r#""$request.body.action""#).unwrap();
        assert_eq!(expr.evaluate(DOC_BODY).as_deref(), Some("join"));
        assert_eq!(
            serde_json::to_string(&expr).unwrap(),
            r#""$request.body.action""#
        );
        let error = serde_json::from_str::<RouteSelectionExpression>(r#""$context.x""#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unsupported variable"), "{error}");
        assert!(serde_json::from_str::<RouteSelectionExpression>("5").is_err());
    }
}
