//! Subjects, patterns, keys and names: validation and wildcard matching.
//!
//! Subjects are dot-separated tokens (`orders.eu.created`). A *pattern* may use
//! `*` for exactly one token and `>` (last token only) for one or more
//! remaining tokens, as NATS does. KV keys follow the same token rules with a
//! wider character set, so a KV watch filter is a pattern over keys.
//!
//! Validation lives here, once, so that every backend refuses the same inputs
//! with the same [`ErrorKind::InvalidArgument`].

use crate::error::{Error, ErrorKind, Result};

/// The longest subject, key or pattern accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;

fn invalid(what: &str, value: &str, why: &str) -> Error {
    // Untrusted input may be long; quote a bounded prefix only.
    let shown: String = value.chars().take(64).collect();
    Error::new(
        ErrorKind::InvalidArgument,
        format!("invalid {what} `{shown}`: {why}"),
    )
}

fn check_tokens(
    what: &str,
    value: &str,
    allow_wildcards: bool,
    ok: fn(char) -> bool,
) -> Result<()> {
    if value.is_empty() {
        return Err(invalid(what, value, "empty"));
    }
    if value.len() > MAX_SUBJECT_LEN {
        return Err(invalid(what, value, "too long"));
    }
    let mut tokens = value.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(invalid(what, value, "empty token"));
        }
        if token == "*" || token == ">" {
            if !allow_wildcards {
                return Err(invalid(what, value, "wildcards are not allowed here"));
            }
            if token == ">" && tokens.peek().is_some() {
                return Err(invalid(what, value, "`>` must be the last token"));
            }
            continue;
        }
        if let Some(c) = token.chars().find(|&c| !ok(c)) {
            return Err(invalid(
                what,
                value,
                &format!("character {c:?} is not allowed"),
            ));
        }
    }
    Ok(())
}

fn subject_char(c: char) -> bool {
    // Whitespace and the wildcard characters would change a subject's meaning on
    // subject-based brokers; everything else printable is allowed.
    !(c.is_whitespace() || c.is_control() || c == '*' || c == '>')
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=')
}

/// Validate a concrete subject (no wildcards), for publishing.
pub fn validate_subject(subject: &str) -> Result<()> {
    check_tokens("subject", subject, false, subject_char)
}

/// Validate a subject pattern (wildcards allowed), for subscribing.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    check_tokens("subject pattern", pattern, true, subject_char)
}

/// Validate a KV key: tokens of `[A-Za-z0-9-/_=]` separated by single dots.
pub fn validate_key(key: &str) -> Result<()> {
    check_tokens("key", key, false, key_char)
}

/// Validate a KV key filter: a key pattern that may use `*` and `>`.
pub fn validate_key_filter(filter: &str) -> Result<()> {
    check_tokens("key filter", filter, true, key_char)
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The longest endpoint name, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// Validate an endpoint name: dot-separated tokens of `[A-Za-z0-9_-]`
/// (`echo`, `agent.7.status`), each 1 to 64 characters, at most
/// [`MAX_ENDPOINT_LEN`] bytes in all. Tokens let an application name
/// endpoints in a hierarchy, as subjects are; a backend that routes by
/// subject puts the endpoint's tokens into its subjects as they are.
pub fn validate_endpoint(endpoint: &str) -> Result<()> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(invalid("endpoint", endpoint, "too long"));
    }
    check_tokens("endpoint", endpoint, false, name_char)?;
    if endpoint.split('.').any(|t| t.len() > 64) {
        return Err(invalid(
            "endpoint",
            endpoint,
            "a token is longer than 64 characters",
        ));
    }
    Ok(())
}

/// Validate a resource name (bucket, stream, queue, consumer, group):
/// 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(what, name, "must be 1 to 64 characters"));
    }
    if let Some(c) = name.chars().find(|c| !name_char(*c)) {
        return Err(invalid(
            what,
            name,
            &format!("character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

/// Whether `subject` matches `pattern` (`*` one token, `>` one or more).
///
/// Both are assumed valid; this is the hot path of every in-library filter so
/// it neither allocates nor re-validates.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The literal prefix of a pattern before its first wildcard token, with a
/// trailing dot when a wildcard follows. Transports with prefix filtering
/// (ZeroMQ SUB) subscribe to this and match exactly with [`matches()`].
pub fn literal_prefix(pattern: &str) -> &str {
    let mut end = 0;
    for token in pattern.split('.') {
        if token == "*" || token == ">" {
            return &pattern[..end];
        }
        end += token.len();
        if end < pattern.len() {
            end += 1;
        }
    }
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_semantics() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "x.y"));
        assert!(matches("*.b.*", "a.b.c"));
        assert!(!matches("a.b", "a.bc"));
        assert!(matches("a.b", "a.b"));
    }

    #[test]
    fn validation() {
        assert!(validate_subject("orders.eu").is_ok());
        assert!(validate_subject("orders.*").is_err());
        assert!(validate_subject("a..b").is_err());
        assert!(validate_subject(".a").is_err());
        assert!(validate_subject("a b").is_err());
        assert!(validate_pattern("a.>").is_ok());
        assert!(validate_pattern("a.>.b").is_err());
        assert!(validate_key("cfg/app_1=x.y-z").is_ok());
        for bad in ["", "a b", "a.", ".a", "a..b", "ü", "a*", "a>", "a\n"] {
            let err = validate_key(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
        assert!(validate_name("bucket", "ok_name-1").is_ok());
        assert!(validate_name("bucket", "no.dots").is_err());
        assert!(validate_endpoint("echo").is_ok());
        assert!(validate_endpoint("agent.7f3a.status").is_ok());
        let token = "t".repeat(64);
        assert!(validate_endpoint(&[token.as_str(); 3].join(".")).is_ok());
        let long_token = "t".repeat(65);
        let too_long = [token.as_str(); 4].join(".");
        for bad in [
            "",
            "a..b",
            "a.",
            ".a",
            "a.*",
            "a.>",
            "a b",
            "a/b",
            "ü",
            &long_token,
            &too_long,
        ] {
            let err = validate_endpoint(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix("a.b.*"), "a.b.");
        assert_eq!(literal_prefix("a.>"), "a.");
        assert_eq!(literal_prefix(">"), "");
        assert_eq!(literal_prefix("a.b"), "a.b");
    }
}
