//! The `opentelemetry` feature: trace context read from and written to the spans of the
//! `tracing-opentelemetry` layer the application installs. Without such a layer every
//! function here finds no span context and the caller keeps its own.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::TraceContext;
use crate::envelope::{Headers, headers};

/// Makes `parent`, with the `tracestate` in `headers`, the OpenTelemetry parent of `span`.
pub(super) fn set_parent(span: &tracing::Span, parent: TraceContext, headers: &Headers) {
    let state = headers
        .get(headers::TRACESTATE)
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let remote = SpanContext::new(
        TraceId::from(parent.trace_id),
        SpanId::from(parent.span_id),
        flags,
        true,
        state,
    );
    // An error means no OpenTelemetry layer records the span: it then has no parent to set.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The trace context of the current span, when an OpenTelemetry layer records it.
pub(super) fn current() -> Option<TraceContext> {
    span_context(&tracing::Span::current()).map(|span| trace_context(&span))
}

/// `span`'s context, with its `tracestate`, or else `parent`'s, written into `to`; `None`,
/// writing nothing, when no OpenTelemetry layer records `span`.
pub(super) fn write_span(
    span: &tracing::Span,
    to: &mut Headers,
    parent: Option<&Headers>,
) -> Option<TraceContext> {
    let context = span_context(span)?;
    let state = context.trace_state().header();
    if !state.is_empty() {
        to.insert(headers::TRACESTATE, state);
    } else if let Some(parent) = parent {
        super::keep_state(to, parent);
    }
    Some(trace_context(&context))
}

fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

fn trace_context(span: &SpanContext) -> TraceContext {
    TraceContext {
        trace_id: u128::from_be_bytes(span.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(span.span_id().to_bytes()),
        sampled: span.is_sampled(),
    }
}
