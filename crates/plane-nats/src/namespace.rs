//! Namespaces: several environments on one NATS server that never see each
//! other.
//!
//! A namespace `N` (URL key `namespace`, e.g. `nylon.dev`) is put in front of
//! everything plane names on the server: request, control and queue subjects
//! (`N.plane.req.E`), event subjects (`N.orders.created`), inboxes
//! (`N._INBOX.…`), and the names of streams, kv buckets and object buckets.
//! Subjects take `N.` in front; JetStream names cannot hold dots, so they take
//! `N` with its dots turned into `_` and a `__` separator (`nylon_dev__B`,
//! whose kv stream is `KV_nylon_dev__B`). A namespace's tokens may not contain
//! `_`, which keeps that mapping one-to-one: the first `__` of a mapped name
//! always ends the namespace, so two namespaces never map onto one name.
//!
//! Applications see their own names only: subjects of received events and the
//! stream of a publish acknowledgement come back without the namespace. The
//! JetStream API subjects (`$JS.API.…`) and the kv and object subjects inside a
//! bucket (`$KV.<bucket>.…`, `$O.<bucket>.…`) are the server's, and are kept
//! apart by the mapped bucket names.

use std::borrow::Cow;

use plane_core::{Error, ErrorKind, Result};

/// The longest namespace, in bytes: the mapped names must stay within the
/// server's limits for stream and bucket names with plane's own names after it.
const MAX_LEN: usize = 64;

/// Where plane's names live on one server. The default is no namespace: names
/// are used as they are, and plain NATS clients see plane's subjects unchanged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Namespace {
    /// `N.`, put in front of subjects; empty for no namespace.
    subjects: String,
    /// `N__` with dots as `_`, put in front of stream and bucket names.
    names: String,
}

impl Namespace {
    /// The namespace `ns` (`None` or empty for none).
    ///
    /// # Errors
    /// `InvalidConfig` unless `ns` is dot-separated tokens of `[A-Za-z0-9-]`,
    /// at most [`MAX_LEN`] bytes.
    pub(crate) fn new(ns: Option<&str>) -> Result<Self> {
        let Some(ns) = ns.filter(|ns| !ns.is_empty()) else {
            return Ok(Namespace::default());
        };
        validate(ns)?;
        Ok(Namespace {
            subjects: format!("{ns}."),
            names: format!("{}__", ns.replace('.', "_")),
        })
    }

    /// `subject` (or pattern) as the server knows it.
    pub(crate) fn subject<'a>(&self, subject: &'a str) -> Cow<'a, str> {
        if self.subjects.is_empty() {
            Cow::Borrowed(subject)
        } else {
            Cow::Owned(format!("{}{subject}", self.subjects))
        }
    }

    /// [`subject`](Self::subject) of a subject the caller owns: moved, not
    /// copied, when there is no namespace (the publish path).
    pub(crate) fn owned_subject(&self, subject: String) -> String {
        if self.subjects.is_empty() {
            subject
        } else {
            format!("{}{subject}", self.subjects)
        }
    }

    /// A subject the server delivered, as the application named it.
    pub(crate) fn local_subject<'a>(&self, subject: &'a str) -> &'a str {
        subject.strip_prefix(&self.subjects).unwrap_or(subject)
    }

    /// A stream or bucket name as the server knows it.
    pub(crate) fn name<'a>(&self, name: &'a str) -> Cow<'a, str> {
        if self.names.is_empty() {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(format!("{}{name}", self.names))
        }
    }

    /// A stream or bucket name the server reported, as the application named it.
    pub(crate) fn local_name<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(&self.names).unwrap_or(name)
    }

    /// The prefix of this connection's inboxes, so replies stay inside the
    /// namespace too (one permission, `N.>`, then covers everything but the
    /// JetStream API). `None`: the client's default `_INBOX`.
    pub(crate) fn inbox_prefix(&self) -> Option<String> {
        (!self.subjects.is_empty()).then(|| format!("{}_INBOX", self.subjects))
    }
}

/// Check a namespace's spelling (see [`Namespace::new`]).
pub(crate) fn validate(ns: &str) -> Result<()> {
    let invalid = |why: &str| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("invalid namespace `{ns}`: {why}"),
        )
    };
    if ns.len() > MAX_LEN {
        return Err(invalid(&format!("longer than {MAX_LEN} bytes")));
    }
    for token in ns.split('.') {
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(invalid(&format!(
                "character {c:?} is not allowed (tokens are [A-Za-z0-9-], separated by dots)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_leaves_names_alone() {
        let ns = Namespace::new(None).expect("none");
        assert_eq!(ns.subject("orders.>"), "orders.>");
        assert_eq!(ns.name("B"), "B");
        assert_eq!(ns.inbox_prefix(), None);
        assert_eq!(ns.local_subject("orders.x"), "orders.x");
        assert_eq!(Namespace::new(Some("")).expect("empty").name("B"), "B");
    }

    #[test]
    fn maps_and_unmaps_subjects_and_names() {
        let ns = Namespace::new(Some("nylon.dev")).expect("valid");
        assert_eq!(
            ns.subject("plane.req.agent.7.status"),
            "nylon.dev.plane.req.agent.7.status"
        );
        assert_eq!(
            ns.local_subject("nylon.dev.orders.created"),
            "orders.created"
        );
        assert_eq!(ns.name("jobs"), "nylon_dev__jobs");
        assert_eq!(ns.local_name("nylon_dev__jobs"), "jobs");
        assert_eq!(ns.inbox_prefix().as_deref(), Some("nylon.dev._INBOX"));
    }

    #[test]
    fn different_namespaces_never_share_a_name() {
        // `a.b` + `c` and `a` + `b_c` would both be `a_b_c` without the `__`
        // separator and the ban on `_` in namespace tokens.
        let ab = Namespace::new(Some("a.b")).expect("valid");
        let a = Namespace::new(Some("a")).expect("valid");
        assert_ne!(ab.name("c"), a.name("b_c"));
        assert_ne!(ab.name("c"), a.name("b__c"));
        assert_ne!(ab.subject("c"), a.subject("b_c"));
    }

    #[test]
    fn refuses_bad_spellings() {
        for bad in [
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "a.*",
            ">",
            "ü",
            &"x".repeat(65),
        ] {
            assert_eq!(
                Namespace::new(Some(bad)).unwrap_err().kind(),
                ErrorKind::InvalidConfig,
                "{bad}"
            );
        }
    }
}
