//! W3C trace context, carried in `traceparent` and `tracestate` headers.
//!
//! Every message carries a `traceparent`: [`Metadata::trace`](crate::Metadata::trace) in the
//! process, the header on the wire. A message published from outside a handler starts
//! a trace, or continues the caller's when its options carry one; every event a handler
//! publishes continues the trace of the message it handles. One business flow across any
//! number of services is therefore one trace, whichever tracing backend reads it.
//!
//! With the `opentelemetry` feature and a `tracing-opentelemetry` layer installed, the trace
//! context is that of the exported spans: a `choreo.handle` span is a child of the span that
//! published its message, and a message carries the span it was published in.

use std::fmt;

use crate::envelope::{Headers, headers};

#[cfg(feature = "opentelemetry")]
mod otel;

/// A position in a trace: which trace, which span, and whether it is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace, 128 bits, never zero.
    pub trace_id: u128,
    /// The span that published the message, 64 bits, never zero.
    pub span_id: u64,
    /// Whether the trace is sampled (the `01` flag).
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            sampled: true,
        }
    }

    /// A new span in the same trace.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// The `traceparent` form, written without the formatting machinery: one allocation.
    pub fn traceparent(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        for shift in (0..32).rev() {
            text.push(char::from(
                HEX[(self.trace_id >> (shift * 4)) as usize & 0xf],
            ));
        }
        text.push('-');
        for shift in (0..16).rev() {
            text.push(char::from(
                HEX[(self.span_id >> (shift * 4)) as usize & 0xf],
            ));
        }
        text.push_str(if self.sampled { "-01" } else { "-00" });
        text
    }

    /// Parses a `traceparent` header (version `00`).
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace context in `headers`' `traceparent`, if it holds a valid one: how a caller's
    /// trace reaches [`PublishOptions::header`](crate::PublishOptions::header).
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        headers.get(headers::TRACEPARENT).and_then(Self::parse)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The context of the current span, when an OpenTelemetry layer records it: inside a handler,
/// its `choreo.handle` span or a span the handler entered.
#[inline]
pub(crate) fn current_span() -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    {
        otel::current()
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        None
    }
}

/// Makes the trace context `parent` of a message, with the `tracestate` in its `headers`, the
/// OpenTelemetry parent of `span`, the span that handles it.
#[inline]
pub(crate) fn set_parent(span: &tracing::Span, parent: TraceContext, headers: &Headers) {
    #[cfg(feature = "opentelemetry")]
    otel::set_parent(span, parent, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, parent, headers);
}

/// Copies the `tracestate` of `parent`, if any, into `to`.
pub(crate) fn keep_state(to: &mut Headers, parent: &Headers) {
    if let Some(state) = parent.get(headers::TRACESTATE) {
        to.insert(headers::TRACESTATE, state);
    }
}

/// The current span, as the trace context of an event a handler publishes, with its
/// `tracestate` (or that of `incoming`, the message handled) written into `to`; `None`,
/// writing nothing, when no OpenTelemetry layer records the current span.
#[inline]
pub(crate) fn write_current_span(to: &mut Headers, incoming: &Headers) -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    {
        otel::write_span(&tracing::Span::current(), to, Some(incoming))
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = (to, incoming);
        None
    }
}

/// The trace context of a message published from outside a handler, in `span`: continues
/// `caller`, the trace the caller passed, when there is one, else starts a trace; `headers`
/// are those the caller gave, where a `tracestate` goes. With an OpenTelemetry layer the
/// message carries `span` (whose parent is `caller`, or else the caller's current span), or
/// the current span when `span` is disabled.
pub(crate) fn published(
    span: &tracing::Span,
    caller: Option<TraceContext>,
    headers: &mut Headers,
) -> TraceContext {
    #[cfg(feature = "opentelemetry")]
    {
        if let Some(caller) = caller {
            otel::set_parent(span, caller, headers);
        }
        let own = otel::write_span(span, headers, None).or_else(|| {
            caller
                .is_none()
                .then(|| otel::write_span(&tracing::Span::current(), headers, None))
                .flatten()
        });
        if let Some(own) = own {
            return own;
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
    caller.map_or_else(TraceContext::root, |parent| parent.child())
}

impl fmt::Display for TraceContext {
    /// The `traceparent` form: `00-<trace-id>-<span-id>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parsed = TraceContext::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert!(parsed.sampled);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }
}
