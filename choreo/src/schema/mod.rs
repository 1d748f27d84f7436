//! Contracts for other teams: JSON Schema and AsyncAPI export, compatibility checks and the
//! choreography map.
//!
//! [`export`] writes everything another team needs to read, validate and depend on a
//! service's events without reading its Rust code:
//!
//! ```text
//! <dir>/
//!   index.json                       every event version below, with name, key and file
//!   service.json                     the service: handlers, what each reads and emits, queues
//!   asyncapi.json                    AsyncAPI 3.0: channels, messages, operations, AMQP bindings
//!   schemas/<name>.v<version>.json   one JSON Schema (draft 2020-12) per event version
//! ```
//!
//! The export holds every event the service consumes, emits, or
//! [publishes](crate::Service::publishes) from outside its handlers, in every version this
//! binary knows: the versions its handlers read and send, and older ones whose types are
//! still linked (until a version's type is deleted, it stays part of the contract).
//!
//! ```standalone_crate
//! use choreo::{handler, Context, Event, HandlerError, Service};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[choreo(name = "orders.order-placed", version = 1)]
//! pub struct OrderPlaced {
//!     #[choreo(key)]
//!     pub order_id: String,
//!     pub total_cents: u64,
//! }
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[choreo(name = "billing.payment-captured", version = 1)]
//! pub struct PaymentCaptured {
//!     #[choreo(key)]
//!     pub order_id: String,
//! }
//!
//! #[handler(emits(PaymentCaptured))]
//! async fn capture_payment(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.publish(&PaymentCaptured { order_id: order.order_id })?;
//!     Ok(())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let billing = Service::new("billing").handler(capture_payment);
//! let dir = std::env::temp_dir().join(format!("choreo-schema-doc-{}", std::process::id()));
//! let report = choreo::schema::export(&billing, &dir)?;
//! assert_eq!(report.events, 2);
//! assert!(dir.join("schemas/orders.order-placed.v1.json").is_file());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`compat`] compares two exported sets and names each breaking change; [`map`] draws the
//! choreography of several services and lints it. The `choreo` command of `choreo-amqp`
//! runs both from the command line.

mod asyncapi;
pub mod compat;
mod description;
pub mod map;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::event::EventDescriptor;
use crate::idempotency::IdempotencyStore;
use crate::service::Service;

pub use description::{
    BindingDescription, EventRef, ExportedService, HandlerDescription, Index, IndexEntry,
    ServiceDescription, load_exports,
};

/// The format of an export, written into `index.json` and `service.json`. A reader accepts
/// exports of the same format.
pub const FORMAT: &str = "choreo-export/1";

/// The file listing every event version of an export.
pub const INDEX_FILE: &str = "index.json";
/// The file describing the service.
pub const SERVICE_FILE: &str = "service.json";
/// The AsyncAPI document.
pub const ASYNCAPI_FILE: &str = "asyncapi.json";
/// The folder of the JSON Schemas.
pub const SCHEMA_DIR: &str = "schemas";

/// The `$schema` of every exported JSON Schema.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Why contracts could not be exported or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The service's name or its handlers' names cannot name queues.
    #[error("service `{service}` cannot be exported: {source}")]
    Service {
        /// The service.
        service: String,
        /// What is wrong with it.
        #[source]
        source: crate::Error,
    },
    /// A handler names an event version no type in this binary declares.
    #[error(
        "service `{service}`: {role} `{name}` v{version}, but no `#[derive(Event)]` type of that name and version is linked into this binary"
    )]
    NotInCatalog {
        /// The service.
        service: String,
        /// Who needs the event, e.g. `handler `charge-card` reads`.
        role: String,
        /// The event name.
        name: String,
        /// The version.
        version: u32,
    },
    /// Two types in this binary declare the same event name and version with different
    /// schemas.
    #[error(
        "`{name}` v{version} is declared by two types with different schemas: `{first}` and `{second}`; give one of them another name or version"
    )]
    Ambiguous {
        /// The event name.
        name: String,
        /// The version.
        version: u32,
        /// One type.
        first: String,
        /// The other.
        second: String,
    },
    /// A file or folder could not be read or written.
    #[error("{action} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. `cannot write`.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the JSON it should be.
    #[error("`{}` is not valid: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An export's files contradict each other or come from another format.
    #[error("`{}` is not a usable choreo export: {reason}", path.display())]
    Invalid {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A folder holds no export.
    #[error(
        "`{}` holds no choreo export: neither `{INDEX_FILE}` nor a folder with one inside",
        path.display()
    )]
    NoExport {
        /// The folder.
        path: PathBuf,
    },
}

/// What [`export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// The service.
    pub service: String,
    /// The folder.
    pub dir: PathBuf,
    /// Every file written, in the order written.
    pub files: Vec<PathBuf>,
    /// How many event versions the export holds.
    pub events: usize,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} event versions, {} files in {}",
            self.service,
            self.events,
            self.files.len(),
            self.dir.display()
        )
    }
}

/// Writes the contracts of `service` into `dir`: see the [module documentation](self) for
/// the layout. Creates `dir` if needed and replaces an earlier export there, removing the
/// schema files it no longer holds.
///
/// Equivalent to `Contracts::of(service)?.write(dir)`; use [`Contracts`] to set the
/// AsyncAPI document's version or an exchange prefix.
///
/// # Errors
///
/// [`SchemaError::Service`] when the service's name is not kebab-case or two handlers share
/// a name, [`SchemaError::NotInCatalog`] or [`SchemaError::Ambiguous`] when an event version cannot
/// be found, and [`SchemaError::Io`] when a file cannot be written.
pub fn export<S: IdempotencyStore>(
    service: &Service<S>,
    dir: impl AsRef<Path>,
) -> Result<ExportReport, SchemaError> {
    Contracts::of(service)?.write(dir)
}

/// One event version's contract: its identity and its annotated JSON Schema.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EventSchema {
    /// `<domain>.<event>`.
    pub name: String,
    /// The version.
    pub version: u32,
    /// The owning domain.
    pub domain: String,
    /// `<name>.v<version>`.
    pub routing_key: String,
    /// The field that carries the business key, if any.
    pub key: Option<String>,
    /// The JSON Schema (draft 2020-12), with `$id`, `title` and the `x-choreo-*`
    /// annotations: `x-choreo-name`, `x-choreo-version`, `x-choreo-domain`,
    /// `x-choreo-routing-key` and, when the event has one, `x-choreo-key`.
    pub schema: Value,
}

impl EventSchema {
    /// The contract of the event type `descriptor` describes.
    pub fn of(descriptor: &EventDescriptor) -> Self {
        let schema = annotate(descriptor, descriptor.json_schema().to_value());
        Self {
            name: descriptor.name.to_owned(),
            version: descriptor.version,
            domain: descriptor.domain.to_owned(),
            routing_key: descriptor.routing_key.to_owned(),
            key: descriptor.key_field.map(str::to_owned),
            schema,
        }
    }

    /// The schema's path inside an export: `schemas/<name>.v<version>.json`.
    pub fn file(&self) -> String {
        schema_file(&self.name, self.version)
    }

    /// The schema's `$id`: `urn:choreo:event:<name>:v<version>`.
    pub fn id(&self) -> String {
        schema_id(&self.name, self.version)
    }

    /// The name and version, as an [`EventRef`].
    pub fn event_ref(&self) -> EventRef {
        EventRef::new(&self.name, self.version)
    }
}

/// Keywords whose value maps names to schemas (not to keywords).
fn is_schema_map(keyword: &str) -> bool {
    matches!(
        keyword,
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
    )
}

fn schema_file(name: &str, version: u32) -> String {
    format!("{SCHEMA_DIR}/{name}.v{version}.json")
}

fn schema_id(name: &str, version: u32) -> String {
    format!("urn:choreo:event:{name}:v{version}")
}

fn annotate(descriptor: &EventDescriptor, schema: Value) -> Value {
    let mut object = match schema {
        Value::Object(object) => object,
        Value::Bool(true) => Map::new(),
        other => {
            let mut wrapper = Map::new();
            wrapper.insert("allOf".into(), Value::Array(vec![other]));
            wrapper
        }
    };
    let mut annotated = Map::new();
    annotated.insert("$schema".into(), json!(JSON_SCHEMA_DIALECT));
    annotated.insert(
        "$id".into(),
        json!(schema_id(descriptor.name, descriptor.version)),
    );
    annotated.insert(
        "title".into(),
        json!(format!("{} v{}", descriptor.name, descriptor.version)),
    );
    object.remove("$schema");
    object.remove("$id");
    object.remove("title");
    annotated.insert("x-choreo-name".into(), json!(descriptor.name));
    annotated.insert("x-choreo-version".into(), json!(descriptor.version));
    annotated.insert("x-choreo-domain".into(), json!(descriptor.domain));
    annotated.insert("x-choreo-routing-key".into(), json!(descriptor.routing_key));
    if let Some(key) = descriptor.key_field {
        annotated.insert("x-choreo-key".into(), json!(key));
    }
    annotated.extend(object);
    Value::Object(annotated)
}

/// The contracts of one service, in memory: the JSON Schemas, the service description,
/// the index and the AsyncAPI document.
#[derive(Clone, Debug)]
pub struct Contracts {
    service: String,
    handlers: Vec<HandlerModel>,
    publishes: Vec<EventRef>,
    domains: Vec<String>,
    events: Vec<EventSchema>,
    version: String,
    exchange_prefix: String,
}

#[derive(Clone, Debug)]
struct HandlerModel {
    name: String,
    queue: String,
    event: String,
    version: u32,
    reads: Vec<u32>,
    emits: Vec<EventRef>,
    retry_queues: Vec<String>,
    poison_queue: String,
}

impl Contracts {
    /// Gathers the contracts of `service`: every event it consumes, emits or publishes, in
    /// every version this binary's [catalog](crate::catalog) holds.
    ///
    /// Settings that do not name queues are not checked, and the service needs none of the
    /// [state](crate::State) its handlers take.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Service`] when the service's name is not kebab-case or two handlers
    /// share a name, and [`SchemaError::NotInCatalog`] or [`SchemaError::Ambiguous`] when an
    /// event version cannot be found.
    pub fn of<S: IdempotencyStore>(service: &Service<S>) -> Result<Self, SchemaError> {
        // Only what names the queues is checked: the contracts of a service whose shared
        // state (a database pool) is not at hand can still be exported.
        let invalid = |source| SchemaError::Service {
            service: service.name().to_owned(),
            source,
        };
        if !crate::service::is_kebab_name(service.name()) {
            return Err(invalid(crate::Error::config(
                "service name",
                format!(
                    "`{}` is not lower kebab-case (letters, digits and single dashes, starting with a letter), e.g. `billing`",
                    service.name()
                ),
            )));
        }
        let mut names = BTreeSet::new();
        if let Some(twice) = service.handlers().find(|h| !names.insert(h.name)) {
            return Err(invalid(crate::Error::config(
                "handler names",
                format!("two handlers are named `{}`", twice.name),
            )));
        }
        let topology = service.layout();
        let mut wanted: BTreeMap<(String, u32), String> = BTreeMap::new();
        let mut handlers = Vec::with_capacity(topology.queues.len());
        for (info, queue) in service.handlers().zip(&topology.queues) {
            for &version in info.reads {
                wanted
                    .entry((info.event.name.to_owned(), version))
                    .or_insert_with(|| format!("handler `{}` reads", info.name));
            }
            for emitted in info.emits {
                wanted
                    .entry((emitted.name.to_owned(), emitted.version))
                    .or_insert_with(|| format!("handler `{}` emits", info.name));
            }
            let mut emits: Vec<EventRef> = info
                .emits
                .iter()
                .map(|e| EventRef::new(e.name, e.version))
                .collect();
            emits.sort();
            emits.dedup();
            handlers.push(HandlerModel {
                name: info.name.to_owned(),
                queue: queue.name.clone(),
                event: info.event.name.to_owned(),
                version: info.event.version,
                reads: info.reads.to_vec(),
                emits,
                retry_queues: queue
                    .retry_tiers
                    .iter()
                    .map(|delay| queue.retry_queue(*delay))
                    .collect(),
                poison_queue: queue.poison_queue(),
            });
        }

        let mut events: BTreeMap<(String, u32), EventSchema> = BTreeMap::new();
        let mut publishes = Vec::new();
        for descriptor in service.published() {
            publishes.push(EventRef::new(descriptor.name, descriptor.version));
            let schema = EventSchema::of(descriptor);
            events.insert((schema.name.clone(), schema.version), schema);
        }
        publishes.sort();
        // Every version of these events the binary knows is part of the contract, until its
        // type is deleted: a producer that moved to v2 still exports v1, which consumers
        // may read.
        let names: BTreeSet<String> = wanted
            .keys()
            .map(|(name, _)| name.clone())
            .chain(events.keys().map(|(name, _)| name.clone()))
            .collect();
        for descriptor in crate::event::catalog() {
            if names.contains(descriptor.name) {
                wanted
                    .entry((descriptor.name.to_owned(), descriptor.version))
                    .or_insert_with(|| "exports every version of".to_owned());
            }
        }
        for ((name, version), role) in wanted {
            if events.contains_key(&(name.clone(), version)) {
                continue;
            }
            let descriptor =
                find_descriptor(&name, version)?.ok_or_else(|| SchemaError::NotInCatalog {
                    service: service.name().to_owned(),
                    role,
                    name: name.clone(),
                    version,
                })?;
            events.insert((name, version), EventSchema::of(&descriptor));
        }

        Ok(Self {
            service: service.name().to_owned(),
            handlers,
            publishes,
            domains: topology.exchanges,
            events: events.into_values().collect(),
            version: "0.0.0".to_owned(),
            exchange_prefix: String::new(),
        })
    }

    /// Sets the version of the AsyncAPI document (`info.version`), e.g. the service's own
    /// release. Default: `0.0.0`.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the prefix of every exchange, as configured on the transport (e.g. `acme.` for
    /// `acme.orders`). Default: none.
    #[must_use]
    pub fn exchange_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exchange_prefix = prefix.into();
        self
    }

    /// The service's name.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// Every event version of the export, sorted by name and version.
    pub fn events(&self) -> &[EventSchema] {
        &self.events
    }

    /// The contract of one event version, if the export holds it.
    pub fn event(&self, name: &str, version: u32) -> Option<&EventSchema> {
        self.events
            .iter()
            .find(|e| e.name == name && e.version == version)
    }

    fn exchange(&self, domain: &str) -> String {
        format!("{}{domain}", self.exchange_prefix)
    }

    /// The machine-readable description of the service (`service.json`).
    pub fn description(&self) -> ServiceDescription {
        ServiceDescription {
            format: FORMAT.to_owned(),
            service: self.service.clone(),
            exchanges: self.domains.iter().map(|d| self.exchange(d)).collect(),
            publishes: self.publishes.clone(),
            handlers: self
                .handlers
                .iter()
                .map(|h| HandlerDescription {
                    name: h.name.clone(),
                    queue: h.queue.clone(),
                    event: h.event.clone(),
                    version: h.version,
                    reads: h.reads.clone(),
                    emits: h.emits.clone(),
                    bindings: h
                        .reads
                        .iter()
                        .map(|v| BindingDescription {
                            exchange: self.exchange(crate::envelope::domain_of(&h.event)),
                            routing_key: format!("{}.v{v}", h.event),
                        })
                        .collect(),
                    retry_queues: h.retry_queues.clone(),
                    poison_queue: h.poison_queue.clone(),
                })
                .collect(),
        }
    }

    /// The index of the export (`index.json`).
    pub fn index(&self) -> Index {
        Index {
            format: FORMAT.to_owned(),
            service: self.service.clone(),
            description: SERVICE_FILE.to_owned(),
            asyncapi: ASYNCAPI_FILE.to_owned(),
            events: self
                .events
                .iter()
                .map(|e| IndexEntry {
                    name: e.name.clone(),
                    version: e.version,
                    domain: e.domain.clone(),
                    exchange: self.exchange(&e.domain),
                    routing_key: e.routing_key.clone(),
                    key: e.key.clone(),
                    schema: e.file(),
                })
                .collect(),
        }
    }

    /// The AsyncAPI 3.0 document of the service (`asyncapi.json`).
    pub fn asyncapi(&self) -> Value {
        asyncapi::document(self)
    }

    /// Writes the export into `dir`: see the [module documentation](self) for the layout.
    /// Creates `dir` if needed; replaces an earlier export there, removing the schema files
    /// it no longer holds.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Io`] when a folder or file cannot be created or written.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<ExportReport, SchemaError> {
        let dir = dir.as_ref();
        let schemas = dir.join(SCHEMA_DIR);
        std::fs::create_dir_all(&schemas).map_err(|source| SchemaError::Io {
            action: "cannot create",
            path: schemas.clone(),
            source,
        })?;
        let keep: BTreeSet<PathBuf> = self.events.iter().map(|e| dir.join(e.file())).collect();
        remove_stale_schemas(&schemas, &keep)?;

        let mut files = Vec::with_capacity(self.events.len() + 3);
        for event in &self.events {
            files.push(write_json(&dir.join(event.file()), &event.schema)?);
        }
        files.push(write_json(&dir.join(INDEX_FILE), &self.index())?);
        files.push(write_json(&dir.join(SERVICE_FILE), &self.description())?);
        files.push(write_json(&dir.join(ASYNCAPI_FILE), &self.asyncapi())?);
        Ok(ExportReport {
            service: self.service.clone(),
            dir: dir.to_owned(),
            files,
            events: self.events.len(),
        })
    }
}

/// The catalog entry of `name` and `version`; an error when two types with different schemas
/// claim it.
fn find_descriptor(name: &str, version: u32) -> Result<Option<EventDescriptor>, SchemaError> {
    let mut found: Option<(EventDescriptor, Value)> = None;
    for descriptor in inventory::iter::<EventDescriptor> {
        if descriptor.name != name || descriptor.version != version {
            continue;
        }
        match &found {
            None => found = Some((*descriptor, descriptor.json_schema().to_value())),
            Some((first, schema)) => {
                if first.rust_type() != descriptor.rust_type()
                    && *schema != descriptor.json_schema().to_value()
                {
                    return Err(SchemaError::Ambiguous {
                        name: name.to_owned(),
                        version,
                        first: first.rust_type().to_owned(),
                        second: descriptor.rust_type().to_owned(),
                    });
                }
            }
        }
    }
    Ok(found.map(|(descriptor, _)| descriptor))
}

fn remove_stale_schemas(schemas: &Path, keep: &BTreeSet<PathBuf>) -> Result<(), SchemaError> {
    let entries = std::fs::read_dir(schemas).map_err(|source| SchemaError::Io {
        action: "cannot read",
        path: schemas.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| SchemaError::Io {
            action: "cannot read",
            path: schemas.to_owned(),
            source,
        })?;
        let path = entry.path();
        // Only files named like an exported schema, `<name>.v<version>.json`.
        let is_schema = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.rsplit_once(".v"))
            .is_some_and(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            && path.is_file();
        if is_schema && !keep.contains(&path) {
            std::fs::remove_file(&path).map_err(|source| SchemaError::Io {
                action: "cannot remove",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<PathBuf, SchemaError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| SchemaError::Json {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| SchemaError::Io {
        action: "cannot write",
        path: path.to_owned(),
        source,
    })?;
    Ok(path.to_owned())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, SchemaError> {
    let text = std::fs::read(path).map_err(|source| SchemaError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| SchemaError::Json {
        path: path.to_owned(),
        source,
    })
}
