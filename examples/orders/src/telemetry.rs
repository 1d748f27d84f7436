//! The demo's tracing, with the `otel` feature: spans exported through OpenTelemetry to a
//! collector in the process, and log lines kept in memory, so the demo can show one order's
//! trace and a handler's log line without a tracing backend.
//!
//! A service would install the same two layers with a real exporter (OTLP, say) and a log
//! writer of its own; nothing else changes.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::subscriber::SetGlobalDefaultError;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;

/// The process's tracing: an OpenTelemetry layer and a log-line layer.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    spans: Collector,
    logs: LogLines,
}

impl Telemetry {
    /// Installs the process's default subscriber: a `tracing-subscriber` registry with a
    /// `tracing-opentelemetry` layer, whose spans go to a collector in the process, and a
    /// `fmt` layer writing `info` and above to memory.
    ///
    /// # Errors
    ///
    /// When the process already has a default subscriber.
    pub fn install() -> Result<Self, SetGlobalDefaultError> {
        let spans = Collector::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let logs = LogLines::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("example-orders")))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || writer.clone())
                    .with_filter(LevelFilter::INFO),
            );
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(Self {
            provider,
            spans,
            logs,
        })
    }

    /// The trace of the flow that [`place_order`](crate::orders::place_order) started for
    /// `order_id`, once its spans have ended.
    pub fn flow(&self, order_id: &str) -> Option<Flow> {
        // Simple exports happen as spans end; flushing is for exporters that batch.
        let _ = self.provider.force_flush();
        let spans = self.spans.lock().clone();
        let root = spans
            .iter()
            .filter(|s| s.name == "place_order" && attribute(s, "order_id") == order_id)
            .min_by_key(|s| s.start_time)?;
        let trace_id = root.span_context.trace_id();
        let root_id = root.span_context.span_id();
        let correlation_id = spans
            .iter()
            .find(|s| s.parent_span_id == root_id)
            .map(|publish| attribute(publish, "correlation_id"))?;
        // The business flow: the order's front-door span, and every span of its messages.
        let (spans, elsewhere): (Vec<SpanData>, Vec<SpanData>) = spans
            .into_iter()
            .filter(|s| {
                s.span_context.span_id() == root_id
                    || attribute(s, "correlation_id") == correlation_id
            })
            .partition(|s| s.span_context.trace_id() == trace_id);
        Some(Flow {
            order_id: order_id.to_owned(),
            trace_id,
            spans,
            elsewhere: elsewhere.len(),
        })
    }

    /// The log lines written so far.
    pub fn log_lines(&self) -> Vec<String> {
        let bytes = self.logs.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// One order's flow as its exported spans tell it.
#[derive(Debug)]
pub struct Flow {
    order_id: String,
    trace_id: TraceId,
    /// The flow's spans in its trace.
    spans: Vec<SpanData>,
    /// Spans of the same business flow in other traces: a message published again.
    elsewhere: usize,
}

impl Flow {
    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// How many of the flow's spans are in its trace.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the flow has no span in its trace (never: it has its front-door span).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every handler that ran in the trace, `<service>.<handler>`.
    pub fn handlers(&self) -> Vec<String> {
        self.spans
            .iter()
            .filter(|s| s.name == "choreo.handle")
            .map(|s| attribute(s, "handler"))
            .collect()
    }

    fn children(&self, parent: SpanId) -> Vec<&SpanData> {
        let mut children: Vec<&SpanData> = self
            .spans
            .iter()
            .filter(|s| s.parent_span_id == parent)
            .collect();
        children.sort_by_key(|s| s.start_time);
        children
    }

    fn lines<'a>(
        &'a self,
        span: &'a SpanData,
        indent: &str,
        out: &mut Vec<(String, &'a SpanData)>,
    ) {
        out.push((format!("{indent}{}", label(span)), span));
        let children = self.children(span.span_context.span_id());
        let below = indent.replace("└─ ", "   ").replace("├─ ", "│  ");
        for (i, child) in children.iter().enumerate() {
            let branch = if i + 1 == children.len() {
                "└─ "
            } else {
                "├─ "
            };
            self.lines(child, &format!("{below}{branch}"), out);
        }
    }
}

impl fmt::Display for Flow {
    /// A tree: the front door, the publish, then each handler under the span that published
    /// its message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: std::collections::BTreeSet<String> = self
            .handlers()
            .into_iter()
            .filter_map(|h| h.split_once('.').map(|(service, _)| service.to_owned()))
            .collect();
        writeln!(
            f,
            "{}: {} spans across {} services, all in trace {}",
            self.order_id,
            self.len(),
            services.len(),
            self.trace_id()
        )?;
        // Roots: spans whose parent is not in the flow.
        let mut lines = Vec::new();
        for root in self.spans.iter().filter(|s| {
            !self
                .spans
                .iter()
                .any(|p| p.span_context.span_id() == s.parent_span_id)
        }) {
            self.lines(root, "", &mut lines);
        }
        let width = lines
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (line, span) in &lines {
            let pad = width - line.chars().count();
            writeln!(
                f,
                "  {line}{:pad$}  span {:016x}",
                "",
                span.span_context.span_id()
            )?;
        }
        if self.elsewhere > 0 {
            write!(
                f,
                "  ({} more spans of the flow are in another trace: publishing {} again under \
                 its message id was a new publish, so a new trace)",
                self.elsewhere, self.order_id
            )?;
        }
        Ok(())
    }
}

fn label(span: &SpanData) -> String {
    let event = || {
        format!(
            "{} v{}",
            attribute(span, "event"),
            attribute(span, "version")
        )
    };
    match &*span.name {
        "choreo.handle" => format!("{} handles {}", attribute(span, "handler"), event()),
        "choreo.publish" => format!("choreo.publish {}", event()),
        "place_order" => format!("place_order {}", attribute(span, "order_id")),
        other => other.to_owned(),
    }
}

fn attribute(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
        .unwrap_or_default()
}

/// Keeps every exported span, in the order they ended.
#[derive(Clone, Debug, Default)]
struct Collector(Arc<Mutex<Vec<SpanData>>>);

impl Collector {
    fn lock(&self) -> MutexGuard<'_, Vec<SpanData>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SpanExporter for Collector {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.lock().extend(batch);
        Ok(())
    }
}

/// Log output kept in memory.
#[derive(Clone, Debug, Default)]
struct LogLines(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
