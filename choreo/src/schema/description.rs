//! The files of an export that describe it: `index.json` and `service.json`, and reading an
//! export back.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EventSchema, FORMAT, INDEX_FILE, SchemaError, read_json};

/// An event name and version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventRef {
    /// `<domain>.<event>`.
    pub name: String,
    /// The version.
    pub version: u32,
}

impl EventRef {
    /// `name` at `version`.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Self {
            name: name.into(),
            version,
        }
    }
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// `service.json`: what a service consumes, emits and publishes, and its queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceDescription {
    /// The export format, [`FORMAT`].
    pub format: String,
    /// The service's name.
    pub service: String,
    /// The exchanges the service declares: those of the events it consumes, emits and
    /// publishes.
    pub exchanges: Vec<String>,
    /// Events the service publishes from outside its handlers, e.g. from its API.
    #[serde(default)]
    pub publishes: Vec<EventRef>,
    /// The service's handlers.
    #[serde(default)]
    pub handlers: Vec<HandlerDescription>,
}

impl ServiceDescription {
    /// Every event version the service sends: what its handlers emit and what it publishes.
    pub fn sends(&self) -> Vec<EventRef> {
        let mut all: Vec<EventRef> = self
            .handlers
            .iter()
            .flat_map(|h| h.emits.iter().cloned())
            .chain(self.publishes.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// One handler in `service.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HandlerDescription {
    /// The handler's name.
    pub name: String,
    /// Its queue, `<service>.<handler>`.
    pub queue: String,
    /// The event it consumes.
    pub event: String,
    /// The version it is written for.
    pub version: u32,
    /// Every version of the event it reads (older ones through upcasts).
    pub reads: Vec<u32>,
    /// The events it may publish.
    #[serde(default)]
    pub emits: Vec<EventRef>,
    /// What its queue is bound to: one routing key per version read.
    #[serde(default)]
    pub bindings: Vec<BindingDescription>,
    /// Its delayed retry queues, `<queue>.retry.<delay>`, in order.
    #[serde(default)]
    pub retry_queues: Vec<String>,
    /// Its poison queue, `<queue>.poison`.
    pub poison_queue: String,
}

impl HandlerDescription {
    /// Whether the handler reads `name` at `version`.
    pub fn reads(&self, name: &str, version: u32) -> bool {
        self.event == name && self.reads.contains(&version)
    }
}

/// An exchange and routing key a handler queue is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BindingDescription {
    /// The exchange.
    pub exchange: String,
    /// `<name>.v<version>`.
    pub routing_key: String,
}

/// `index.json`: every event version of an export and where its schema is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Index {
    /// The export format, [`FORMAT`].
    pub format: String,
    /// The service.
    pub service: String,
    /// The service description's file, relative to the export.
    pub description: String,
    /// The AsyncAPI document's file, relative to the export.
    pub asyncapi: String,
    /// Every event version, sorted by name and version.
    pub events: Vec<IndexEntry>,
}

/// One event version in `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IndexEntry {
    /// `<domain>.<event>`.
    pub name: String,
    /// The version.
    pub version: u32,
    /// The owning domain.
    pub domain: String,
    /// The exchange it is published to.
    pub exchange: String,
    /// `<name>.v<version>`.
    pub routing_key: String,
    /// The field that carries the business key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The JSON Schema's file, relative to the export.
    pub schema: String,
}

/// One service's export, read back from its folder.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ExportedService {
    /// The folder.
    pub dir: PathBuf,
    /// `index.json`.
    pub index: Index,
    /// `service.json`.
    pub description: ServiceDescription,
    /// Every event version's contract, in the order of the index.
    pub events: Vec<EventSchema>,
}

impl ExportedService {
    /// Reads the export in `dir`.
    ///
    /// # Errors
    ///
    /// [`SchemaError::Io`] or [`SchemaError::Json`] when a file cannot be read, and
    /// [`SchemaError::Invalid`] when the files contradict each other or come from another
    /// format.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, SchemaError> {
        let dir = dir.as_ref();
        let index_path = dir.join(INDEX_FILE);
        let index: Index = read_json(&index_path)?;
        check_format(&index_path, &index.format)?;
        let description_path = inside(dir, &index_path, &index.description)?;
        let description: ServiceDescription = read_json(&description_path)?;
        check_format(&description_path, &description.format)?;
        if description.service != index.service {
            return Err(SchemaError::Invalid {
                path: description_path,
                reason: format!(
                    "it describes service `{}`, the index `{}`",
                    description.service, index.service
                ),
            });
        }
        let mut events = Vec::with_capacity(index.events.len());
        for entry in &index.events {
            let path = inside(dir, &index_path, &entry.schema)?;
            let schema: Value = read_json(&path)?;
            let annotated = (
                schema.get("x-choreo-name").and_then(Value::as_str),
                schema.get("x-choreo-version").and_then(Value::as_u64),
            );
            if let (Some(name), Some(version)) = annotated {
                if name != entry.name || version != u64::from(entry.version) {
                    return Err(SchemaError::Invalid {
                        path,
                        reason: format!(
                            "the index lists it as `{}` v{}, the schema says `{name}` v{version}",
                            entry.name, entry.version
                        ),
                    });
                }
            }
            events.push(EventSchema {
                name: entry.name.clone(),
                version: entry.version,
                domain: entry.domain.clone(),
                routing_key: entry.routing_key.clone(),
                key: entry.key.clone(),
                schema,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            index,
            description,
            events,
        })
    }
}

fn check_format(path: &Path, format: &str) -> Result<(), SchemaError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(SchemaError::Invalid {
            path: path.to_owned(),
            reason: format!("its format is `{format}`; this version of choreo reads `{FORMAT}`"),
        })
    }
}

/// `relative` inside `dir`, refusing paths that leave it.
fn inside(dir: &Path, index: &Path, relative: &str) -> Result<PathBuf, SchemaError> {
    let path = Path::new(relative);
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(dir.join(path))
    } else {
        Err(SchemaError::Invalid {
            path: index.to_owned(),
            reason: format!("`{relative}` is not a path inside the export"),
        })
    }
}

/// Reads the exports in `paths`: each path is a service's export (a folder with
/// `index.json`) or a folder whose subfolders are exports, as `export-schemas` of the orders
/// example writes them. Sorted by service name.
///
/// # Errors
///
/// [`SchemaError::NoExport`] for a folder that holds none, and the errors of
/// [`ExportedService::load`].
pub fn load_exports<P: AsRef<Path>>(
    paths: impl IntoIterator<Item = P>,
) -> Result<Vec<ExportedService>, SchemaError> {
    let mut all = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.join(INDEX_FILE).is_file() {
            all.push(ExportedService::load(path)?);
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|source| SchemaError::Io {
            action: "cannot read",
            path: path.to_owned(),
            source,
        })?;
        let mut inner = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SchemaError::Io {
                action: "cannot read",
                path: path.to_owned(),
                source,
            })?;
            let candidate = entry.path();
            if candidate.join(INDEX_FILE).is_file() {
                inner.push(candidate);
            }
        }
        if inner.is_empty() {
            return Err(SchemaError::NoExport {
                path: path.to_owned(),
            });
        }
        inner.sort();
        for dir in inner {
            all.push(ExportedService::load(dir)?);
        }
    }
    all.sort_by(|a, b| a.index.service.cmp(&b.index.service));
    Ok(all)
}
