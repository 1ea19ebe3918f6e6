//! Route predicates in APISIX's `vars` form (lua-resty-expr): a list of
//! `[variable, operator, value]` that must all hold, `[variable, "!", operator, value]` for
//! the negation, and `["AND"|"OR"|"!AND"|"!OR", expr, ...]` for nesting. Variables are nginx's
//! names: `uri`, `host`, `request_method`, `remote_addr`, `scheme`, `server_port`, `arg_<name>`,
//! `http_<header>` (lower case, `-` as `_`), `cookie_<name>`.

use std::borrow::Cow;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

use crate::GatewayError;

/// What a predicate reads a variable from.
pub trait Vars {
    /// The variable's value, if the request has it.
    fn var(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// A predicate.
#[derive(Debug, Clone)]
pub enum Expr {
    /// One comparison.
    Compare {
        /// The variable.
        var: String,
        /// Negated (`!`).
        not: bool,
        /// The comparison.
        op: Op,
    },
    /// All must hold (`not`: at least one fails).
    All(Vec<Expr>, bool),
    /// One must hold (`not`: none holds).
    Any(Vec<Expr>, bool),
}

/// A comparison of a variable.
#[derive(Debug, Clone)]
pub enum Op {
    /// `==`
    Eq(String),
    /// `~=`
    Ne(String),
    /// `>`, `>=`, `<`, `<=` on numbers (the ordering the number must have against the value,
    /// and whether equal counts).
    Num(std::cmp::Ordering, bool, f64),
    /// `~~` (and `~*`: case-insensitive)
    Regex(Box<Regex>),
    /// `in`: one of these.
    In(Vec<String>),
    /// `has`: the comma-separated value lists this.
    Has(String),
    /// `ipmatch`: in one of these ranges.
    IpMatch(Vec<IpNet>),
}

fn bad(why: impl std::fmt::Display) -> GatewayError {
    GatewayError::invalid(format!("property \"vars\" validation failed: {why}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a `vars` list.
pub fn parse(v: &Value) -> Result<Vec<Expr>, GatewayError> {
    let list = v.as_array().ok_or_else(|| bad("expected an array"))?;
    if let Some(Value::String(s)) = list.first() {
        if logical(s).is_some() {
            return Ok(vec![parse_expr(v)?]);
        }
    }
    list.iter().map(parse_expr).collect()
}

fn logical(s: &str) -> Option<(bool, bool)> {
    match s {
        "AND" => Some((true, false)),
        "OR" => Some((false, false)),
        "!AND" => Some((true, true)),
        "!OR" => Some((false, true)),
        _ => None,
    }
}

fn parse_expr(v: &Value) -> Result<Expr, GatewayError> {
    let list = v
        .as_array()
        .ok_or_else(|| bad(format!("{v} is not an expression")))?;
    if let Some((all, not)) = list.first().and_then(Value::as_str).and_then(logical) {
        let parts = list[1..]
            .iter()
            .map(parse_expr)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if all {
            Expr::All(parts, not)
        } else {
            Expr::Any(parts, not)
        });
    }
    let var = list
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{v}: the first item names a variable")))?
        .to_string();
    let (not, rest) = match list.get(1).and_then(Value::as_str) {
        Some("!") => (true, &list[2..]),
        _ => (false, &list[1..]),
    };
    let (op, value) = match rest {
        [op, value] => (op.as_str().unwrap_or_default(), value),
        [value] => ("==", value),
        _ => return Err(bad(format!("{v}: expected [variable, operator, value]"))),
    };
    let s = || text(value).ok_or_else(|| bad(format!("{v}: the value must be a string or number")));
    let num = || {
        value
            .as_f64()
            .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| bad(format!("{v}: the value must be a number")))
    };
    use std::cmp::Ordering::{Greater, Less};
    let op = match op {
        "==" => Op::Eq(s()?),
        "~=" => Op::Ne(s()?),
        ">" => Op::Num(Greater, false, num()?),
        ">=" => Op::Num(Greater, true, num()?),
        "<" => Op::Num(Less, false, num()?),
        "<=" => Op::Num(Less, true, num()?),
        "~~" | "~*" => {
            let pattern = s()?;
            let pattern = if op == "~*" {
                format!("(?i){pattern}")
            } else {
                pattern
            };
            Op::Regex(Box::new(
                Regex::new(&pattern).map_err(|e| bad(format!("{v}: {e}")))?,
            ))
        }
        "in" => Op::In(
            value
                .as_array()
                .ok_or_else(|| bad(format!("{v}: \"in\" takes an array")))?
                .iter()
                .filter_map(text)
                .collect(),
        ),
        "has" => Op::Has(s()?),
        "ipmatch" => {
            let ranges = match value {
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                Value::String(one) => vec![one.clone()],
                _ => return Err(bad(format!("{v}: \"ipmatch\" takes addresses"))),
            };
            Op::IpMatch(
                ranges
                    .iter()
                    .map(|r| crate::model::parse_net(r, "vars"))
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(bad(format!("{v}: unknown operator {other:?}"))),
    };
    Ok(Expr::Compare { var, not, op })
}

impl Expr {
    /// True when the request's variables satisfy the predicate.
    pub fn eval(&self, vars: &dyn Vars) -> bool {
        match self {
            Expr::All(parts, not) => parts.iter().all(|p| p.eval(vars)) != *not,
            Expr::Any(parts, not) => parts.iter().any(|p| p.eval(vars)) != *not,
            Expr::Compare { var, not, op } => {
                let value = vars.var(var);
                let holds = match (op, value.as_deref()) {
                    // A missing variable equals nothing and differs from everything.
                    (Op::Ne(_), None) => true,
                    (_, None) => false,
                    (Op::Eq(want), Some(v)) => v == want,
                    (Op::Ne(want), Some(v)) => v != want,
                    (Op::Num(ord, or_eq, want), Some(v)) => v
                        .parse::<f64>()
                        .ok()
                        .and_then(|n| n.partial_cmp(want))
                        .is_some_and(|c| c == *ord || (*or_eq && c.is_eq())),
                    (Op::Regex(re), Some(v)) => re.is_match(v),
                    (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
                    (Op::Has(item), Some(v)) => v.split(',').any(|p| p.trim() == item),
                    (Op::IpMatch(ranges), Some(v)) => v
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ranges.iter().any(|r| r.contains(&ip))),
                };
                holds != *not
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Vars for Map {
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn holds(exprs: &Value, vars: &Map) -> bool {
        parse(exprs).expect("parses").iter().all(|e| e.eval(vars))
    }

    #[test]
    fn comparisons() {
        let vars = Map(HashMap::from([
            ("http_x_user", "ios"),
            ("arg_n", "12"),
            ("uri", "/v2/items"),
            ("remote_addr", "10.1.2.3"),
        ]));
        assert!(holds(&json!([["http_x_user", "==", "ios"]]), &vars));
        assert!(!holds(&json!([["http_x_user", "!", "==", "ios"]]), &vars));
        assert!(holds(
            &json!([["arg_n", ">", 10], ["arg_n", "<=", "12"]]),
            &vars
        ));
        assert!(holds(&json!([["uri", "~~", "^/v[0-9]+/"]]), &vars));
        assert!(holds(&json!([["http_x_user", "~*", "^IOS$"]]), &vars));
        assert!(holds(
            &json!([["http_x_user", "in", ["android", "ios"]]]),
            &vars
        ));
        assert!(holds(
            &json!([["remote_addr", "ipmatch", ["10.0.0.0/8"]]]),
            &vars
        ));
        assert!(holds(&json!([["missing", "~=", "x"]]), &vars));
        assert!(!holds(&json!([["missing", "==", "x"]]), &vars));
        assert!(holds(
            &json!(["OR", ["arg_n", "==", "1"], ["arg_n", "==", "12"]]),
            &vars
        ));
        assert!(!holds(
            &json!(["!OR", ["arg_n", "==", "1"], ["arg_n", "==", "12"]]),
            &vars
        ));
        assert!(parse(&json!([["a", "??", 1]])).is_err());
        assert!(parse(&json!([["a", "~~", "("]])).is_err());
    }
}

/// A string with nginx variables in it (`$name`, `${name}`; `\$` is a `$`), filled in per
/// request as APISIX's `resolve_var` does: a variable the request lacks becomes empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

impl Template {
    /// Splits `s` into text and variables.
    pub fn parse(s: &str) -> Template {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let b = s.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && b.get(i + 1) == Some(&b'$') {
                text.push('$');
                i += 2;
                continue;
            }
            if b[i] == b'$' {
                let (name, next) = if b.get(i + 1) == Some(&b'{') {
                    let end = b[i + 2..].iter().position(|c| !word(*c)).map(|n| i + 2 + n);
                    match end {
                        Some(e) if e > i + 2 && b[e] == b'}' => (&s[i + 2..e], e + 1),
                        _ => ("", i + 1),
                    }
                } else {
                    let end = b[i + 1..]
                        .iter()
                        .position(|c| !word(*c))
                        .map_or(b.len(), |n| i + 1 + n);
                    (&s[i + 1..end], end)
                };
                if !name.is_empty() {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Var(name.to_string()));
                    i = next;
                    continue;
                }
            }
            // Whole UTF-8 characters: `i` is always on a boundary here.
            let len = s[i..].chars().next().map_or(1, char::len_utf8);
            text.push_str(&s[i..i + len]);
            i += len;
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template { pieces }
    }

    /// True when it names a variable (else it renders as its text every time).
    pub fn has_vars(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Var(_)))
    }

    /// Its text when it names no variable.
    pub fn text(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(_) => return None,
            }
        }
        Some(out)
    }

    /// The string for a request.
    pub fn render(&self, vars: &dyn Vars) -> String {
        self.render_with(vars, |v| Cow::Borrowed(v))
    }

    /// The string for a request, each variable's value passed through `escape` (a URI's
    /// `?` in a value must not start its query).
    pub fn render_with(
        &self,
        vars: &dyn Vars,
        escape: impl for<'a> Fn(&'a str) -> Cow<'a, str>,
    ) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => {
                    if let Some(value) = vars.var(v) {
                        out.push_str(&escape(&value));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    struct Fixed;

    impl Vars for Fixed {
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            match name {
                "arg_id" => Some(Cow::Borrowed("42")),
                "http_x_user" => Some(Cow::Borrowed("ann")),
                _ => None,
            }
        }
    }

    #[test]
    fn variables_are_filled_in_and_missing_ones_are_empty() {
        let t = Template::parse("/users/$arg_id/${http_x_user}x/$nothing.end");
        assert!(t.has_vars());
        assert_eq!(t.render(&Fixed), "/users/42/annx/.end");
        let plain = Template::parse("costs \\$5, $ alone, ${unclosed, é$");
        assert!(!plain.has_vars());
        assert_eq!(plain.render(&Fixed), "costs $5, $ alone, ${unclosed, é$");
    }
}
