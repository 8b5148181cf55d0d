//! Glob patterns for action types and agent ids: `*` matches any run of
//! characters, `?` exactly one. Patterns are classified once at load time so
//! the common shapes (everything, exact, prefix, suffix) cost one comparison.
//!
//! Shared by the policy engine (rule scopes) and the identity layer (the
//! agent ids an agent principal may act as). No I/O, no dependencies.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Glob {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Wildcard(Vec<char>),
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let special = |c: char| c == '*' || c == '?';
        if pattern == "*" {
            return Glob::Any;
        }
        if !pattern.contains(special) {
            return Glob::Exact(pattern.to_owned());
        }
        if let Some(prefix) = pattern.strip_suffix('*')
            && !prefix.contains(special)
        {
            return Glob::Prefix(prefix.to_owned());
        }
        if let Some(suffix) = pattern.strip_prefix('*')
            && !suffix.contains(special)
        {
            return Glob::Suffix(suffix.to_owned());
        }
        Glob::Wildcard(pattern.chars().collect())
    }

    pub fn is_exact(&self) -> Option<&str> {
        match self {
            Glob::Exact(s) => Some(s),
            _ => None,
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => s == text,
            Glob::Prefix(p) => text.starts_with(p.as_str()),
            Glob::Suffix(s) => text.ends_with(s.as_str()),
            Glob::Wildcard(pattern) => wildcard(pattern, text),
        }
    }
}

/// Iterative wildcard matching with single-star backtracking: linear in
/// practice, never exponential.
fn wildcard(pattern: &[char], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, text: &str, expected: bool) {
        assert_eq!(Glob::new(pattern).matches(text), expected, "{pattern} ~ {text}");
    }

    #[test]
    fn globs() {
        check("*", "anything", true);
        check("send_email", "send_email", true);
        check("send_email", "send_emails", false);
        check("send_*", "send_sms", true);
        check("send_*", "resend_sms", false);
        check("*_customer", "delete_customer", true);
        check("delete_*_record", "delete_user_record", true);
        check("delete_*_record", "delete_user_records", false);
        check("agent-?", "agent-7", true);
        check("agent-?", "agent-77", false);
        check("a*b*c", "aXbYbZc", true);
        check("a*b*c", "aXbYbZ", false);
        check("**", "", true);
        check("é*", "éclair", true);
    }
}
