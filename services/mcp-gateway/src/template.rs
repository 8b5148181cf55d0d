//! Resource templates: `order/{order_id}` over a tool call's arguments.
//!
//! An argument's text is percent-encoded except for unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`), so that an agent choosing the argument cannot
//! add a path segment (`42/../admin`), a glob character (`*`) or anything
//! else that would make the resource another than the one a policy names.

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// An argument, by its path (`a.b`).
    Argument(Vec<String>),
}

/// Why a resource could not be made for a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    #[error("argument {0:?}, which the resource is made of, is missing")]
    Absent(String),
    #[error("argument {0:?}, which the resource is made of, must be a string, number or boolean")]
    NotScalar(String),
}

impl Template {
    /// Parses `text`; `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => name.push(c),
                            Some(c) => return Err(format!("{c:?} in an argument name")),
                            None => return Err("an unclosed '{'".into()),
                        }
                    }
                    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(format!("{{{name}}}: an empty argument name"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Argument(path));
                }
                '}' => return Err("a '}' without its '{' (write '}}' for a brace)".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The resource for `arguments`.
    pub fn render(&self, arguments: Option<&serde_json::Map<String, Value>>) -> Result<String, Missing> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Argument(path) => {
                    let name = path.join(".");
                    let mut value = arguments.and_then(|a| a.get(&path[0]));
                    for key in &path[1..] {
                        value = value.and_then(|v| v.get(key));
                    }
                    let text = match value {
                        None | Some(Value::Null) => return Err(Missing::Absent(name)),
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(Value::Bool(b)) => b.to_string(),
                        Some(_) => return Err(Missing::NotScalar(name)),
                    };
                    encode_into(&text, &mut out);
                }
            }
        }
        Ok(out)
    }
}

fn encode_into(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: serde_json::Value) -> serde_json::Map<String, Value> {
        json.as_object().unwrap().clone()
    }

    #[test]
    fn arguments_fill_the_template() {
        let template = Template::parse("order/{order_id}/line/{line.n}").unwrap();
        let resource = template.render(Some(&args(serde_json::json!({"order_id": "A-42", "line": {"n": 3}})))).unwrap();
        assert_eq!(resource, "order/A-42/line/3");
        assert_eq!(Template::parse("{{literal}}").unwrap().render(None).unwrap(), "{literal}");
        assert_eq!(Template::parse("").unwrap().render(None).unwrap(), "");
    }

    #[test]
    fn hostile_arguments_cannot_change_the_resource_s_shape() {
        let template = Template::parse("order/{id}").unwrap();
        for (id, expected) in [
            ("42/../../admin", "order/42%2F..%2F..%2Fadmin"),
            ("*", "order/%2A"),
            ("a?b", "order/a%3Fb"),
            ("50%", "order/50%25"),
            ("é", "order/%C3%A9"),
            ("x\ny", "order/x%0Ay"),
        ] {
            assert_eq!(template.render(Some(&args(serde_json::json!({ "id": id })))).unwrap(), expected, "{id:?}");
        }
    }

    #[test]
    fn a_missing_or_structured_argument_is_refused_by_name() {
        let template = Template::parse("order/{id}").unwrap();
        assert_eq!(template.render(None), Err(Missing::Absent("id".into())));
        assert_eq!(template.render(Some(&args(serde_json::json!({"id": null})))), Err(Missing::Absent("id".into())));
        assert_eq!(template.render(Some(&args(serde_json::json!({"id": [1]})))), Err(Missing::NotScalar("id".into())));
        assert_eq!(
            template.render(Some(&args(serde_json::json!({"id": {"a": 1}})))),
            Err(Missing::NotScalar("id".into()))
        );
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        for bad in ["order/{id", "order/}", "{}", "{a..b}", "{a b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
