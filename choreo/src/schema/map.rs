//! The choreography map: who emits and who consumes each event, across services.
//!
//! [`Choreography::mermaid`] draws it as a Mermaid flowchart; [`Choreography::lint`] finds
//! events nobody consumes, handlers whose event nobody emits or publishes, and cycles.
//!
//! ```
//! use choreo::schema::map::{Choreography, Finding};
//! use choreo::schema::ServiceDescription;
//!
//! let billing: ServiceDescription = serde_json::from_value(serde_json::json!({
//!     "format": "choreo-export/1",
//!     "service": "billing",
//!     "exchanges": ["billing", "orders"],
//!     "handlers": [{
//!         "name": "capture-payment",
//!         "queue": "billing.capture-payment",
//!         "event": "orders.order-placed",
//!         "version": 1,
//!         "reads": [1],
//!         "emits": [{ "name": "billing.payment-captured", "version": 1 }],
//!         "poisonQueue": "billing.capture-payment.poison",
//!     }],
//! }))?;
//! let map = Choreography::new([billing]);
//! assert!(map.mermaid().starts_with("flowchart LR"));
//! let findings = map.lint();
//! assert!(matches!(findings[0], Finding::Unconsumed { .. }));
//! assert!(matches!(findings[1], Finding::Unproduced { .. }));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::{self, Write as _};
use std::path::Path;

use super::{EventRef, SchemaError, ServiceDescription, load_exports};

/// The services of a choreography, as their exports describe them.
#[derive(Clone, Debug, Default)]
pub struct Choreography {
    services: Vec<ServiceDescription>,
}

/// Something the lint found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// An event version is sent but no handler reads it.
    Unconsumed {
        /// The event.
        event: EventRef,
        /// Who sends it: handler queues, or `<service> (outside handlers)`.
        senders: Vec<String>,
    },
    /// A handler reads an event no service sends, in any version it reads.
    Unproduced {
        /// The handler's queue.
        handler: String,
        /// The event name.
        event: String,
        /// The versions it reads.
        reads: Vec<u32>,
    },
    /// Handlers that trigger each other in a loop: a handler, the event it emits, the next
    /// handler, ..., back to the first handler.
    Cycle {
        /// Handler queues and events, alternating, ending where it started.
        path: Vec<String>,
    },
}

impl Finding {
    /// `unconsumed-event`, `unproduced-event` or `cycle`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unconsumed { .. } => "unconsumed-event",
            Self::Unproduced { .. } => "unproduced-event",
            Self::Cycle { .. } => "cycle",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unconsumed { event, senders } => write!(
                f,
                "event `{}` v{} is consumed by no handler (sent by {})",
                event.name,
                event.version,
                senders.join(", ")
            ),
            Self::Unproduced {
                handler,
                event,
                reads,
            } => write!(
                f,
                "handler `{handler}` reads `{event}` ({}), which no service emits or publishes",
                reads
                    .iter()
                    .map(|v| format!("v{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Cycle { path } => write!(f, "cycle: {}", path.join(" → ")),
        }
    }
}

impl Choreography {
    /// The choreography of `services`, sorted by name.
    pub fn new(services: impl IntoIterator<Item = ServiceDescription>) -> Self {
        let mut services: Vec<ServiceDescription> = services.into_iter().collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        Self { services }
    }

    /// Reads the exports in `paths`, as [`load_exports`] does.
    ///
    /// # Errors
    ///
    /// As [`load_exports`].
    pub fn load<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self, SchemaError> {
        Ok(Self::new(
            load_exports(paths)?.into_iter().map(|e| e.description),
        ))
    }

    /// The services, sorted by name.
    pub fn services(&self) -> &[ServiceDescription] {
        &self.services
    }

    /// Who sends each event version: handler queues and `<service> (outside handlers)`.
    fn senders(&self) -> BTreeMap<EventRef, Vec<String>> {
        let mut senders: BTreeMap<EventRef, Vec<String>> = BTreeMap::new();
        for service in &self.services {
            for event in &service.publishes {
                senders
                    .entry(event.clone())
                    .or_default()
                    .push(format!("{} (outside handlers)", service.service));
            }
            for handler in &service.handlers {
                for event in &handler.emits {
                    senders
                        .entry(event.clone())
                        .or_default()
                        .push(handler.queue.clone());
                }
            }
        }
        senders
    }

    /// The Mermaid flowchart: a box per service with its handlers (and a node for what it
    /// publishes outside handlers), a rounded node per event, arrows from senders to events
    /// and from events to the handlers that read them. Events nobody consumes are dashed.
    pub fn mermaid(&self) -> String {
        let mut versions: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
        for service in &self.services {
            for event in service.sends() {
                versions
                    .entry(event.name)
                    .or_default()
                    .insert(event.version);
            }
            for handler in &service.handlers {
                versions
                    .entry(handler.event.clone())
                    .or_default()
                    .extend(handler.reads.iter().copied());
            }
        }
        let several = |name: &str| versions.get(name).is_some_and(|v| v.len() > 1);
        let label = |name: &str, list: &[u32]| {
            if several(name) {
                let mut list = list.to_vec();
                list.sort_unstable();
                let text = list
                    .iter()
                    .map(|v| format!("v{v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("-->|{text}|")
            } else {
                "-->".to_owned()
            }
        };

        let mut out = String::from("flowchart LR\n");
        for service in &self.services {
            let _ = writeln!(
                out,
                "    subgraph {}[\"{}\"]",
                node_id("svc", &service.service),
                escape(&service.service)
            );
            if !service.publishes.is_empty() {
                let _ = writeln!(
                    out,
                    "        {}[\"{} (outside handlers)\"]",
                    node_id("pub", &service.service),
                    escape(&service.service)
                );
            }
            for handler in &service.handlers {
                let _ = writeln!(
                    out,
                    "        {}[\"{}\"]",
                    node_id("h", &handler.queue),
                    escape(&handler.name)
                );
            }
            out.push_str("    end\n");
        }
        for name in versions.keys() {
            let _ = writeln!(out, "    {}([\"{}\"])", node_id("ev", name), escape(name));
        }
        for service in &self.services {
            for event in &service.publishes {
                let _ = writeln!(
                    out,
                    "    {} {} {}",
                    node_id("pub", &service.service),
                    label(&event.name, &[event.version]),
                    node_id("ev", &event.name)
                );
            }
            for handler in &service.handlers {
                let _ = writeln!(
                    out,
                    "    {} {} {}",
                    node_id("ev", &handler.event),
                    label(&handler.event, &handler.reads),
                    node_id("h", &handler.queue)
                );
                let mut emitted: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
                for event in &handler.emits {
                    emitted.entry(&event.name).or_default().push(event.version);
                }
                for (name, list) in emitted {
                    let _ = writeln!(
                        out,
                        "    {} {} {}",
                        node_id("h", &handler.queue),
                        label(name, &list),
                        node_id("ev", name)
                    );
                }
            }
        }
        let unconsumed: Vec<&String> = versions
            .keys()
            .filter(|name| {
                !self
                    .services
                    .iter()
                    .flat_map(|s| &s.handlers)
                    .any(|h| &h.event == *name)
            })
            .collect();
        if !unconsumed.is_empty() {
            out.push_str("    classDef unconsumed stroke-dasharray: 4 4\n");
            let ids: Vec<String> = unconsumed.iter().map(|n| node_id("ev", n)).collect();
            let _ = writeln!(out, "    class {} unconsumed", ids.join(","));
        }
        out
    }

    /// Events nobody consumes, handlers whose event nobody sends, and cycles.
    pub fn lint(&self) -> Vec<Finding> {
        let senders = self.senders();
        let handlers: Vec<_> = self.services.iter().flat_map(|s| &s.handlers).collect();
        let mut findings = Vec::new();

        for (event, who) in &senders {
            if !handlers.iter().any(|h| h.reads(&event.name, event.version)) {
                findings.push(Finding::Unconsumed {
                    event: event.clone(),
                    senders: who.clone(),
                });
            }
        }
        for handler in &handlers {
            let produced = handler
                .reads
                .iter()
                .any(|v| senders.contains_key(&EventRef::new(&handler.event, *v)));
            if !produced {
                findings.push(Finding::Unproduced {
                    handler: handler.queue.clone(),
                    event: handler.event.clone(),
                    reads: handler.reads.clone(),
                });
            }
        }

        // handler → (next handler, the event between them)
        let mut edges: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
        for from in &handlers {
            let next = edges.entry(from.queue.as_str()).or_default();
            for event in &from.emits {
                for to in &handlers {
                    if to.reads(&event.name, event.version) {
                        next.entry(to.queue.as_str())
                            .or_insert_with(|| format!("`{}` v{}", event.name, event.version));
                    }
                }
            }
        }
        for component in strongly_connected(&edges) {
            let Some(&start) = component.iter().next() else {
                continue;
            };
            let looped = component.len() > 1
                || edges
                    .get(start)
                    .is_some_and(|next| next.contains_key(start));
            if !looped {
                continue;
            }
            if let Some(path) = cycle_through(start, &component, &edges) {
                findings.push(Finding::Cycle { path });
            }
        }
        findings
    }
}

/// Tarjan's algorithm; components in discovery order, each sorted.
fn strongly_connected<'a>(
    edges: &BTreeMap<&'a str, BTreeMap<&'a str, String>>,
) -> Vec<BTreeSet<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        components: Vec<BTreeSet<&'a str>>,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, BTreeMap<&'a str, String>>,
        state: &mut State<'a>,
    ) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        for &to in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if !state.index.contains_key(to) {
                visit(to, edges, state);
                let low = state.low[node].min(state.low[to]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(to) {
                let low = state.low[node].min(state.index[to]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = BTreeSet::new();
            while let Some(top) = state.stack.pop() {
                state.on_stack.remove(top);
                component.insert(top);
                if top == node {
                    break;
                }
            }
            state.components.push(component);
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        components: Vec::new(),
    };
    for &node in edges.keys() {
        if !state.index.contains_key(node) {
            visit(node, edges, &mut state);
        }
    }
    state.components
}

/// The shortest loop from `start` back to it inside `component`, with the events between.
fn cycle_through(
    start: &str,
    component: &BTreeSet<&str>,
    edges: &BTreeMap<&str, BTreeMap<&str, String>>,
) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(node) = queue.pop_front() {
        for &to in edges.get(node).into_iter().flat_map(BTreeMap::keys) {
            if !component.contains(to) {
                continue;
            }
            if to == start {
                last = Some(node);
                break 'search;
            }
            if !came_from.contains_key(to) {
                came_from.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    let last = last?;
    let mut nodes = vec![last];
    while let Some(&previous) = nodes.last().and_then(|n| came_from.get(n)) {
        nodes.push(previous);
    }
    if nodes.last() != Some(&start) {
        nodes.push(start);
    }
    nodes.reverse();
    nodes.push(start);
    let mut path = Vec::new();
    for pair in nodes.windows(2) {
        path.push(pair[0].to_owned());
        path.push(edges.get(pair[0])?.get(pair[1])?.clone());
    }
    path.push(start.to_owned());
    Some(path)
}

/// A Mermaid node id: letters, digits and underscores only, one-to-one for kebab names.
fn node_id(prefix: &str, name: &str) -> String {
    let mut id = format!("{prefix}_");
    for c in name.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => id.push(c),
            '-' => id.push('_'),
            '.' => id.push_str("__"),
            other => {
                let _ = write!(id, "_x{:x}_", u32::from(other));
            }
        }
    }
    id
}

/// Text inside a quoted Mermaid label.
fn escape(text: &str) -> String {
    text.replace('"', "#quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::HandlerDescription;

    fn handler(
        service: &str,
        name: &str,
        event: &str,
        reads: &[u32],
        emits: &[(&str, u32)],
    ) -> HandlerDescription {
        HandlerDescription {
            name: name.to_owned(),
            queue: format!("{service}.{name}"),
            event: event.to_owned(),
            version: reads.iter().copied().max().unwrap_or(1),
            reads: reads.to_vec(),
            emits: emits.iter().map(|(n, v)| EventRef::new(*n, *v)).collect(),
            bindings: Vec::new(),
            retry_queues: Vec::new(),
            poison_queue: format!("{service}.{name}.poison"),
        }
    }

    fn service(
        name: &str,
        publishes: &[(&str, u32)],
        handlers: Vec<HandlerDescription>,
    ) -> ServiceDescription {
        ServiceDescription {
            format: crate::schema::FORMAT.to_owned(),
            service: name.to_owned(),
            exchanges: Vec::new(),
            publishes: publishes
                .iter()
                .map(|(n, v)| EventRef::new(*n, *v))
                .collect(),
            handlers,
        }
    }

    #[test]
    fn a_clean_chain_has_no_findings() {
        let map = Choreography::new([
            service(
                "a",
                &[("a.started", 1)],
                vec![handler("a", "finish", "b.done", &[1], &[])],
            ),
            service(
                "b",
                &[],
                vec![handler("b", "work", "a.started", &[1], &[("b.done", 1)])],
            ),
        ]);
        assert_eq!(map.lint(), []);
        let chart = map.mermaid();
        assert!(chart.contains("pub_a --> ev_a__started"), "{chart}");
        assert!(chart.contains("ev_a__started --> h_b__work"), "{chart}");
        assert!(chart.contains("h_b__work --> ev_b__done"), "{chart}");
        assert!(!chart.contains("classDef"), "{chart}");
    }

    #[test]
    fn unconsumed_and_unproduced_are_found() {
        let map = Choreography::new([service(
            "a",
            &[("a.started", 1)],
            vec![handler("a", "wait", "x.never", &[2, 1], &[])],
        )]);
        let findings = map.lint();
        assert_eq!(
            findings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "event `a.started` v1 is consumed by no handler (sent by a (outside handlers))",
                "handler `a.wait` reads `x.never` (v2, v1), which no service emits or publishes",
            ]
        );
        assert!(map.mermaid().contains("class ev_a__started unconsumed"));
    }

    #[test]
    fn only_the_versions_read_count() {
        // v2 is emitted, the handler reads only v1: v2 is unconsumed, v1 unproduced.
        let map = Choreography::new([service(
            "a",
            &[],
            vec![
                handler("a", "emit", "a.tick", &[1], &[("a.tock", 2)]),
                handler("a", "read", "a.tock", &[1], &[("a.tick", 1)]),
            ],
        )]);
        let kinds: Vec<&str> = map.lint().iter().map(Finding::kind).collect();
        assert!(kinds.contains(&"unconsumed-event"), "{kinds:?}");
        assert!(kinds.contains(&"unproduced-event"), "{kinds:?}");
        assert!(map.mermaid().contains("-->|v2|"), "{}", map.mermaid());
    }

    #[test]
    fn cycles_are_found_with_their_events() {
        let map = Choreography::new([
            service(
                "a",
                &[],
                vec![handler("a", "ping", "b.pong", &[1], &[("a.ping", 1)])],
            ),
            service(
                "b",
                &[],
                vec![handler("b", "pong", "a.ping", &[1], &[("b.pong", 1)])],
            ),
            service(
                "c",
                &[],
                vec![handler("c", "again", "c.again", &[1], &[("c.again", 1)])],
            ),
        ]);
        let cycles: Vec<String> = map
            .lint()
            .iter()
            .filter(|f| f.kind() == "cycle")
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            cycles,
            [
                "cycle: a.ping → `a.ping` v1 → b.pong → `b.pong` v1 → a.ping",
                "cycle: c.again → `c.again` v1 → c.again",
            ]
        );
    }

    #[test]
    fn node_ids_are_mermaid_safe_and_distinct() {
        assert_eq!(
            node_id("ev", "orders.order-placed"),
            "ev_orders__order_placed"
        );
        assert_ne!(node_id("h", "a.b-c"), node_id("h", "a-b.c"));
        assert_eq!(node_id("svc", "ä"), "svc__xe4_");
    }
}
