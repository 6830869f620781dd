//! W3C trace context (`traceparent` / `tracestate`) carried in plane headers,
//! so a trace crosses processes on every backend.
//!
//! The handles inject it into outgoing requests (and events published within
//! a trace context): a `traceparent` the caller set is sent unchanged; failing
//! that, a call made within a [`current`](TraceContext::current) context (a
//! handler serving a traced request, or code run in
//! [`TraceContext::scope`]) continues that trace with a new span id; failing
//! that, a request starts a new trace. The serving side extracts it
//! ([`Request::trace_context`](crate::request::Request::trace_context)),
//! records it on the handler's span, and runs the handler within a child
//! context, so calls the handler makes continue the trace.
//!
//! plane does not depend on OpenTelemetry: an application bridges these ids to
//! its tracer (or reads the headers directly, which keep their W3C format).

use std::fmt;
use std::future::Future;

use crate::message::{names, Headers};

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// One position in a distributed trace: the W3C `traceparent` fields plus the
/// vendor `tracestate`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.state)
            .finish()
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceContext {
    /// The start of a new trace: random trace and span ids, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 0x01,
            state: None,
        }
    }

    /// The same trace with a new span id (flags and `tracestate` kept): the
    /// context of an operation made within this one.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero_u64(),
            ..self.clone()
        }
    }

    /// Parse a `traceparent` (and optional `tracestate`) per W3C Trace
    /// Context: `None` for anything invalid, which per the specification
    /// means starting a new trace rather than failing the operation.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent.trim();
        if tp.len() < 55 || !tp.is_ascii() {
            return None;
        }
        let version = &tp[0..2];
        if !lower_hex(version) || version == "ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; later versions may append
        // fields after a dash, which this version ignores.
        if (version == "00" && tp.len() != 55) || (tp.len() > 55 && &tp[55..56] != "-") {
            return None;
        }
        let bytes = tp.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let (trace, span, flags) = (&tp[3..35], &tp[36..52], &tp[53..55]);
        if !lower_hex(trace) || !lower_hex(span) || !lower_hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 512)
            .map(str::to_owned);
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The context carried in `headers`, if a valid one is there.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        TraceContext::parse(
            headers.get(names::TRACEPARENT)?,
            headers.get(names::TRACESTATE),
        )
    }

    /// Write this context into `headers` (`tracestate` only when there is one).
    pub fn inject(&self, headers: &mut Headers) {
        headers.insert(names::TRACEPARENT, self.traceparent());
        if let Some(state) = &self.state {
            headers.insert(names::TRACESTATE, state.clone());
        }
    }

    /// The `traceparent` header value (version 00).
    pub fn traceparent(&self) -> String {
        // Written by hand rather than with `format!`: every call that has no
        // trace of its own gets one, so this is on the per-call path.
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, self.trace_id, 32);
        out.push('-');
        push_hex(&mut out, u128::from(self.span_id), 16);
        out.push('-');
        push_hex(&mut out, u128::from(self.flags), 2);
        out
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Whether the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The context the current task runs in, if any: set by [`scope`](TraceContext::scope),
    /// and by the server runtime around every handler.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Run `f` with this context as [`current`](TraceContext::current), so
    /// plane calls it makes continue this trace.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// The context for an outgoing message with `headers`, writing it into
    /// them when the caller set none. A caller's own `traceparent` is left
    /// untouched (and returned if valid). `root` says whether to start a new
    /// trace when there is no current one.
    pub(crate) fn outgoing(headers: &mut Headers, root: bool) -> Option<Self> {
        if headers.get(names::TRACEPARENT).is_some() {
            return TraceContext::from_headers(headers);
        }
        let ctx = match TraceContext::current() {
            Some(current) => current.child(),
            None if root => TraceContext::new_root(),
            None => return None,
        };
        ctx.inject(headers);
        Some(ctx)
    }
}

/// Append the low `digits` hex digits of `v`, lower case, zero padded.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = ((v >> (i * 4)) & 0xf) as u8;
        out.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let ctx = TraceContext::parse(TP, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(ctx.traceparent(), TP);
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), "00f067aa0ba902b7");
        assert!(ctx.sampled());
        assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
        let child = ctx.child();
        assert_eq!(child.trace_id(), ctx.trace_id());
        assert_ne!(child.span_id(), ctx.span_id());
        assert_eq!(child.tracestate(), ctx.tracestate());
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse(&format!("01{}-x", &TP[2..]), None).is_some());
    }

    #[test]
    fn new_roots_are_valid_and_distinct() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::parse(&a.traceparent(), None), Some(a));
    }

    #[tokio::test]
    async fn outgoing_keeps_the_callers_then_continues_the_current_then_starts_one() {
        let mut h = Headers::new().with(names::TRACEPARENT, TP);
        let ctx = TraceContext::outgoing(&mut h, true).unwrap();
        assert_eq!(h.get(names::TRACEPARENT), Some(TP));
        assert_eq!(ctx.traceparent(), TP);

        let parent = TraceContext::parse(TP, None).unwrap();
        let inner = parent
            .clone()
            .scope(async {
                let mut h = Headers::new();
                let ctx = TraceContext::outgoing(&mut h, false).unwrap();
                (ctx, h)
            })
            .await;
        assert_eq!(inner.0.trace_id(), parent.trace_id());
        assert_ne!(inner.0.span_id(), parent.span_id());
        assert_eq!(
            inner.1.get(names::TRACEPARENT),
            Some(inner.0.traceparent().as_str())
        );

        let mut h = Headers::new();
        assert!(TraceContext::outgoing(&mut h, false).is_none());
        assert!(h.is_empty());
        assert!(TraceContext::outgoing(&mut h, true).is_some());
        assert!(h.get(names::TRACEPARENT).is_some());
    }
}
