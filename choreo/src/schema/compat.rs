//! Compatibility of two exported sets of contracts.
//!
//! A change to an event is compared version by version: the schema of `orders.order-placed`
//! v1 in the old set against the schema of the same name and version in the new set. The
//! question is always whether a *reader* accepts every message a *writer* may produce:
//!
//! - Backward ([`Mode::Backward`], the default): consumers on the new schema read every
//!   message written with the old one. Upgrade consumers first; messages still in queues,
//!   retry queues and poison queues, and producers not yet upgraded, keep working.
//! - Forward ([`Mode::Forward`]): consumers still on the old schema read every message
//!   written with the new one. Upgrade producers first.
//! - Full ([`Mode::Full`]): both.
//!
//! Each [`BreakingChange`] names the event, the field and why it breaks whom, in plain
//! words; [`Rule`] lists what is detected. Schemas are resolved through `$ref`/`$defs`,
//! `allOf` is merged, and `anyOf`/`oneOf` are compared branch by branch.
//!
//! An object without `additionalProperties: false` accepts fields it does not list, so
//! adding an optional field is compatible both ways and removing one is compatible
//! backward; closing an object (`additionalProperties: false`, serde's
//! `deny_unknown_fields`) turns both into breaking changes for the readers that closed it.
//!
//! ```
//! use choreo::schema::compat::{Mode, Rule, check_schema};
//! use serde_json::json;
//!
//! let old = json!({
//!     "type": "object",
//!     "properties": { "order_id": { "type": "string" } },
//!     "required": ["order_id"],
//! });
//! let new = json!({
//!     "type": "object",
//!     "properties": { "order_id": { "type": "string" }, "currency": { "type": "string" } },
//!     "required": ["order_id", "currency"],
//! });
//! let changes = check_schema("orders.order-placed", 1, &old, &new, Mode::Backward);
//! assert_eq!(changes.len(), 1);
//! assert_eq!(changes[0].rule, Rule::RequiredFieldAdded);
//! assert!(changes[0].to_string().starts_with(
//!     "orders.order-placed v1: field `currency` was added as required"
//! ));
//! assert!(check_schema("orders.order-placed", 1, &old, &new, Mode::Forward).is_empty());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::{EventSchema, ExportedService, SchemaError, load_exports};

/// Which readers must accept which writers' messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Consumers on the new schema read messages written with the old one.
    #[default]
    Backward,
    /// Consumers on the old schema read messages written with the new one.
    Forward,
    /// Both.
    Full,
}

impl Mode {
    /// The directions the mode checks.
    pub fn directions(self) -> &'static [Direction] {
        match self {
            Self::Backward => &[Direction::Backward],
            Self::Forward => &[Direction::Forward],
            Self::Full => &[Direction::Backward, Direction::Forward],
        }
    }

    /// `backward`, `forward` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "backward",
            Self::Forward => "forward",
            Self::Full => "full",
        }
    }

    /// What the mode promises, in a sentence.
    pub fn promise(self) -> &'static str {
        match self {
            Self::Backward => {
                "consumers on the new schemas read every message written with the old ones"
            }
            Self::Forward => {
                "consumers on the old schemas read every message written with the new ones"
            }
            Self::Full => "old and new schemas read every message written with the other",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not `backward`, `forward` or `full`.
#[derive(Debug, thiserror::Error)]
#[error("unknown compatibility mode `{0}`; expected `backward`, `forward` or `full`")]
pub struct ParseModeError(String);

impl FromStr for Mode {
    type Err = ParseModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "backward" => Ok(Self::Backward),
            "forward" => Ok(Self::Forward),
            "full" => Ok(Self::Full),
            other => Err(ParseModeError(other.to_owned())),
        }
    }
}

/// One direction of a check: who writes and who reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Old producers write, new consumers read.
    Backward,
    /// New producers write, old consumers read.
    Forward,
}

impl Direction {
    /// Why a change breaks: producers may write `what`, and consumers reject `it` (the
    /// pronoun for `what`).
    fn writes_rejected(self, what: impl fmt::Display, it: &str) -> String {
        format!(
            "{} may write {what}, and {} reject {it}",
            self.producers(),
            self.consumers()
        )
    }

    /// Why a change breaks: producers may write `what` that consumers reject.
    fn writes_outside(self, what: &str) -> String {
        format!(
            "{} may write {what} that {} reject",
            self.producers(),
            self.consumers()
        )
    }

    fn producers(self) -> &'static str {
        match self {
            Self::Backward => "producers still on the old schema",
            Self::Forward => "producers on the new schema",
        }
    }

    fn consumers(self) -> &'static str {
        match self {
            Self::Backward => "consumers on the new schema",
            Self::Forward => "consumers still on the old schema",
        }
    }

    /// `(old, new)` from `(writer, reader)`.
    fn old_new<T>(self, writer: T, reader: T) -> (T, T) {
        match self {
            Self::Backward => (writer, reader),
            Self::Forward => (reader, writer),
        }
    }
}

/// What kind of breaking change was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// An event version of the old set is missing from the new one.
    VersionRemoved,
    /// Services of the new set export different schemas for one event version.
    Inconsistent,
    /// A `$ref` cannot be resolved, so the schema cannot be checked.
    Unresolvable,
    /// A new required field (backward).
    RequiredFieldAdded,
    /// A field the old schema requires was removed (forward).
    RequiredFieldRemoved,
    /// An optional field became required (backward).
    FieldMadeRequired,
    /// A required field became optional (forward).
    FieldMadeOptional,
    /// A field was removed from an object that forbids unlisted fields (backward).
    FieldRemoved,
    /// A field was added to an object the old schema closes (forward).
    FieldAdded,
    /// `additionalProperties: false` was added (backward).
    ObjectClosed,
    /// `additionalProperties: false` was removed (forward).
    ObjectOpened,
    /// `null` is no longer allowed (backward).
    NullRemoved,
    /// `null` became allowed (forward).
    NullAdded,
    /// `number` became `integer` (backward).
    TypeNarrowed,
    /// `integer` became `number` (forward).
    TypeWidened,
    /// The type changed otherwise.
    TypeChanged,
    /// A value was removed from an `enum` or `const` (backward).
    EnumValueRemoved,
    /// A value was added to an `enum` or `const` (forward).
    EnumValueAdded,
    /// A field was restricted to a list of values (backward).
    ValuesRestricted,
    /// A field is no longer restricted to a list of values (forward).
    ValuesUnrestricted,
    /// A numeric range, integer or float format, length or item count became narrower
    /// (backward).
    RangeNarrowed,
    /// A numeric range, integer or float format, length or item count became wider
    /// (forward).
    RangeWidened,
    /// A string `format` was added, removed or changed.
    FormatChanged,
    /// A string `pattern` was added, removed or changed.
    PatternChanged,
    /// `multipleOf` or `uniqueItems` became stricter (backward).
    ConstraintTightened,
    /// `multipleOf` or `uniqueItems` became looser (forward).
    ConstraintLoosened,
    /// The schema accepts nothing any more.
    NothingAccepted,
}

impl Rule {
    /// A stable kebab-case name, e.g. `required-field-added`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VersionRemoved => "version-removed",
            Self::Inconsistent => "inconsistent",
            Self::Unresolvable => "unresolvable",
            Self::RequiredFieldAdded => "required-field-added",
            Self::RequiredFieldRemoved => "required-field-removed",
            Self::FieldMadeRequired => "field-made-required",
            Self::FieldMadeOptional => "field-made-optional",
            Self::FieldRemoved => "field-removed",
            Self::FieldAdded => "field-added",
            Self::ObjectClosed => "object-closed",
            Self::ObjectOpened => "object-opened",
            Self::NullRemoved => "null-removed",
            Self::NullAdded => "null-added",
            Self::TypeNarrowed => "type-narrowed",
            Self::TypeWidened => "type-widened",
            Self::TypeChanged => "type-changed",
            Self::EnumValueRemoved => "enum-value-removed",
            Self::EnumValueAdded => "enum-value-added",
            Self::ValuesRestricted => "values-restricted",
            Self::ValuesUnrestricted => "values-unrestricted",
            Self::RangeNarrowed => "range-narrowed",
            Self::RangeWidened => "range-widened",
            Self::FormatChanged => "format-changed",
            Self::PatternChanged => "pattern-changed",
            Self::ConstraintTightened => "constraint-tightened",
            Self::ConstraintLoosened => "constraint-loosened",
            Self::NothingAccepted => "nothing-accepted",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change that breaks some reader, in plain words.
///
/// Displays as `<event> v<version>: <what changed>: <why it breaks whom>`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakingChange {
    /// The event name.
    pub event: String,
    /// The version.
    pub version: u32,
    /// What kind of change.
    pub rule: Rule,
    /// The direction that breaks; `None` for changes that break every reader.
    pub direction: Option<Direction>,
    /// The field, as a path (`lines[].quantity`, `meta.*` for a map's values); `None` for
    /// the event as a whole.
    pub field: Option<String>,
    /// What changed.
    pub what: String,
    /// Why it breaks whom.
    pub why: String,
}

impl fmt::Display for BreakingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{}: {}: {}",
            self.event, self.version, self.what, self.why
        )
    }
}

/// The outcome of comparing two sets.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The mode checked.
    pub mode: Mode,
    /// How many event versions both sets hold.
    pub compared: usize,
    /// Every breaking change, by event and version.
    pub breaking: Vec<BreakingChange>,
    /// Changes worth knowing that break no reader: new versions, a changed business key.
    pub notes: Vec<String>,
}

impl Report {
    /// Whether nothing breaks.
    pub fn is_compatible(&self) -> bool {
        self.breaking.is_empty()
    }
}

/// Every event version of one or more exports, by name and version.
#[derive(Clone, Debug, Default)]
pub struct SchemaSet {
    entries: BTreeMap<(String, u32), SetEntry>,
}

#[derive(Clone, Debug)]
struct SetEntry {
    schema: Value,
    key: Option<String>,
    service: String,
    conflict: Option<String>,
}

impl SchemaSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the exports in `paths`, as [`load_exports`] does.
    ///
    /// # Errors
    ///
    /// As [`load_exports`].
    pub fn load<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self, SchemaError> {
        Ok(Self::from_exports(&load_exports(paths)?))
    }

    /// The event versions of `exports`.
    pub fn from_exports(exports: &[ExportedService]) -> Self {
        let mut set = Self::new();
        for export in exports {
            for event in &export.events {
                set.insert(&export.index.service, event);
            }
        }
        set
    }

    /// Adds `event` as exported by `service`. When another service exported a different
    /// schema for the same name and version, the first is kept and the difference recorded.
    pub fn insert(&mut self, service: &str, event: &EventSchema) {
        let key = (event.name.clone(), event.version);
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key,
                    SetEntry {
                        schema: event.schema.clone(),
                        key: event.key.clone(),
                        service: service.to_owned(),
                        conflict: None,
                    },
                );
            }
            Some(entry) => {
                if entry.conflict.is_none()
                    && strip_annotations(&entry.schema) != strip_annotations(&event.schema)
                {
                    entry.conflict = Some(service.to_owned());
                }
            }
        }
    }

    /// The schema of `name` at `version`.
    pub fn get(&self, name: &str, version: u32) -> Option<&Value> {
        self.entries
            .get(&(name.to_owned(), version))
            .map(|e| &e.schema)
    }

    /// How many event versions the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compares every event version of `old` with the same version in `new`.
pub fn check(old: &SchemaSet, new: &SchemaSet, mode: Mode) -> Report {
    let mut breaking = Vec::new();
    let mut notes = Vec::new();
    let mut compared = 0;
    for ((name, version), old_entry) in &old.entries {
        if let Some(other) = &old_entry.conflict {
            notes.push(format!(
                "{name} v{version}: the old set already holds two different schemas, from `{}` and `{other}`",
                old_entry.service
            ));
        }
        let Some(new_entry) = new.entries.get(&(name.clone(), *version)) else {
            for &direction in mode.directions() {
                breaking.push(version_removed(name, *version, direction));
            }
            continue;
        };
        compared += 1;
        breaking.extend(check_schema(
            name,
            *version,
            &old_entry.schema,
            &new_entry.schema,
            mode,
        ));
        if old_entry.key != new_entry.key {
            notes.push(format!(
                "{name} v{version}: the business key changed from {} to {}: handlers deduplicate new messages by another key than old ones",
                key_words(old_entry.key.as_deref()),
                key_words(new_entry.key.as_deref())
            ));
        }
    }
    for ((name, version), new_entry) in &new.entries {
        if let Some(other) = &new_entry.conflict {
            breaking.push(BreakingChange {
                event: name.clone(),
                version: *version,
                rule: Rule::Inconsistent,
                direction: None,
                field: None,
                what: format!(
                    "the new set holds two different schemas for it, from `{}` and `{other}`",
                    new_entry.service
                ),
                why: "the services disagree on the contract, so one of them may write messages the other rejects".to_owned(),
            });
        }
        if !old.entries.contains_key(&(name.clone(), *version)) {
            notes.push(format!("{name} v{version}: new in this set"));
        }
    }
    breaking.sort_by(|a, b| (&a.event, a.version).cmp(&(&b.event, b.version)));
    Report {
        mode,
        compared,
        breaking,
        notes,
    }
}

fn key_words(key: Option<&str>) -> String {
    key.map_or_else(|| "the message id".to_owned(), |k| format!("`{k}`"))
}

fn version_removed(name: &str, version: u32, direction: Direction) -> BreakingChange {
    let why = match direction {
        Direction::Backward => {
            "consumers on the new contracts no longer read it, yet producers still on the old ones write it and queues may still hold it"
        }
        Direction::Forward => {
            "consumers still on it receive nothing more from producers on the new contracts"
        }
    };
    BreakingChange {
        event: name.to_owned(),
        version,
        rule: Rule::VersionRemoved,
        direction: Some(direction),
        field: None,
        what: "this version was removed".to_owned(),
        why: why.to_owned(),
    }
}

/// Compares one event version's `old` and `new` schema.
pub fn check_schema(
    event: &str,
    version: u32,
    old: &Value,
    new: &Value,
    mode: Mode,
) -> Vec<BreakingChange> {
    let mut changes: Vec<BreakingChange> = Vec::new();
    for &direction in mode.directions() {
        let (writer, reader) = match direction {
            Direction::Backward => (old, new),
            Direction::Forward => (new, old),
        };
        let mut checker = Checker::new(writer, reader, direction);
        checker.compare(writer, reader, "");
        for issue in checker.issues {
            let change = BreakingChange {
                event: event.to_owned(),
                version,
                rule: issue.rule,
                direction: Some(direction),
                field: (!issue.field.is_empty()).then_some(issue.field),
                what: issue.what,
                why: issue.why,
            };
            if !changes.contains(&change) {
                changes.push(change);
            }
        }
    }
    changes
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Issue {
    rule: Rule,
    field: String,
    what: String,
    why: String,
}

/// Deepest nesting followed; deeper schemas are taken as compatible.
const MAX_DEPTH: usize = 128;
/// Longest chain of `$ref`s to `$ref`s followed.
const MAX_REF_HOPS: usize = 32;

/// Finds what a writer's messages may hold that a reader rejects.
struct Checker<'a> {
    writer_root: &'a Value,
    reader_root: &'a Value,
    direction: Direction,
    issues: Vec<Issue>,
    /// `$ref` pairs being compared, so recursive types end.
    active: BTreeSet<(String, String)>,
    depth: usize,
}

#[derive(Clone, Copy)]
enum Side {
    Writer,
    Reader,
}

impl<'a> Checker<'a> {
    fn new(writer_root: &'a Value, reader_root: &'a Value, direction: Direction) -> Self {
        Self {
            writer_root,
            reader_root,
            direction,
            issues: Vec::new(),
            active: BTreeSet::new(),
            depth: 0,
        }
    }

    /// A checker for trying one branch of a union without keeping what it finds.
    fn trial(&self) -> Self {
        Self {
            writer_root: self.writer_root,
            reader_root: self.reader_root,
            direction: self.direction,
            issues: Vec::new(),
            active: self.active.clone(),
            depth: self.depth,
        }
    }

    fn issue(&mut self, rule: Rule, field: &str, what: String, why: String) {
        let issue = Issue {
            rule,
            field: field.to_owned(),
            what,
            why,
        };
        if !self.issues.contains(&issue) {
            self.issues.push(issue);
        }
    }

    fn root(&self, side: Side) -> &'a Value {
        match side {
            Side::Writer => self.writer_root,
            Side::Reader => self.reader_root,
        }
    }

    fn compare(&mut self, writer: &Value, reader: &Value, path: &str) {
        if self.depth >= MAX_DEPTH {
            return;
        }
        let (writer, writer_ref) = match self.normalize(Side::Writer, writer) {
            Ok(resolved) => resolved,
            Err(reason) => return self.unresolvable(path, &reason),
        };
        let (reader, reader_ref) = match self.normalize(Side::Reader, reader) {
            Ok(resolved) => resolved,
            Err(reason) => return self.unresolvable(path, &reason),
        };
        let pair = (writer_ref.is_some() || reader_ref.is_some()).then(|| {
            (
                writer_ref.unwrap_or_default(),
                reader_ref.unwrap_or_default(),
            )
        });
        if let Some(pair) = &pair {
            if !self.active.insert(pair.clone()) {
                return;
            }
        }
        self.depth += 1;
        self.compare_resolved(&writer, &reader, path);
        self.depth -= 1;
        if let Some(pair) = &pair {
            self.active.remove(pair);
        }
    }

    fn unresolvable(&mut self, path: &str, reason: &str) {
        self.issue(
            Rule::Unresolvable,
            path,
            format!("{} cannot be checked", subject(path)),
            format!("{reason}; the check cannot tell who it breaks"),
        );
    }

    fn compare_resolved(&mut self, writer: &Value, reader: &Value, path: &str) {
        // `true` and `{}` accept everything; `false` accepts nothing.
        let reader = match reader {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                if writer != &Value::Bool(false) {
                    let d = self.direction;
                    self.issue(
                        Rule::NothingAccepted,
                        path,
                        format!("{} accepts no value any more", subject(path)),
                        format!(
                            "{} reject every message from {} that carries it",
                            d.consumers(),
                            d.producers()
                        ),
                    );
                }
                return;
            }
            Value::Object(reader) if !has_constraints(reader) => return,
            Value::Object(reader) => reader,
            _ => return,
        };
        let empty = Map::new();
        let writer = match writer {
            Value::Bool(false) => return,
            Value::Object(writer) => writer,
            _ => &empty,
        };

        if let Some(branches) = union(writer) {
            let rest = without_union(writer);
            for branch in branches {
                let branch = self.merged_branch(Side::Writer, &rest, branch);
                self.compare(&branch, &Value::Object(reader.clone()), path);
            }
            return;
        }

        if let Some(branches) = union(reader) {
            let types = Types::of(writer);
            if types != Types::ALL && types.count() > 1 {
                for t in types.iter() {
                    if let Some(part) = restrict(writer, t, types) {
                        self.compare(&Value::Object(part), &Value::Object(reader.clone()), path);
                    }
                }
                return;
            }
            let rest = without_union(reader);
            let mut best: Option<Vec<Issue>> = None;
            for branch in branches {
                let branch = self.merged_branch(Side::Reader, &rest, branch);
                let mut trial = self.trial();
                trial.compare(&Value::Object(writer.clone()), &branch, path);
                if trial.issues.is_empty() {
                    return;
                }
                if best.as_ref().is_none_or(|b| trial.issues.len() < b.len()) {
                    best = Some(trial.issues);
                }
            }
            for issue in best.unwrap_or_default() {
                self.issue(issue.rule, &issue.field, issue.what, issue.why);
            }
            return;
        }

        self.compare_plain(writer, reader, path);
    }

    /// A union branch with the keywords beside the union applied to it.
    fn merged_branch(&self, side: Side, rest: &Map<String, Value>, branch: &Value) -> Value {
        if has_constraints(rest) {
            merge_all(
                vec![Value::Object(rest.clone()), branch.clone()],
                self.root(side),
                0,
            )
            .unwrap_or_else(|_| branch.clone())
        } else {
            branch.clone()
        }
    }

    /// Follows `$ref`s and merges `allOf`; returns the schema and the first `$ref` followed.
    fn normalize(&self, side: Side, schema: &Value) -> Result<(Value, Option<String>), String> {
        let root = self.root(side);
        let first_ref = schema
            .get("$ref")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok((normalize(schema, root, 0)?, first_ref))
    }

    fn compare_plain(
        &mut self,
        writer: &Map<String, Value>,
        reader: &Map<String, Value>,
        path: &str,
    ) {
        let d = self.direction;
        let writer_types = Types::of(writer);
        let reader_types = Types::of(reader);
        let mut rejected = Types::EMPTY;
        for t in writer_types.iter() {
            if !reader_types.accepts(t) {
                rejected = rejected.with(t);
            }
        }
        if rejected.contains(Types::NULL) {
            let (rule, what) = match d {
                Direction::Backward => (
                    Rule::NullRemoved,
                    format!("{} is no longer nullable", subject(path)),
                ),
                Direction::Forward => (
                    Rule::NullAdded,
                    format!("{} was made nullable", subject(path)),
                ),
            };
            self.issue(rule, path, what, d.writes_rejected("null there", "it"));
        }
        let other = rejected.without(Types::NULL);
        if !other.is_empty() {
            let (old, new) = d.old_new(writer_types, reader_types);
            if other == Types::NUMBER && reader_types.contains(Types::INTEGER) {
                let (rule, verb) = match d {
                    Direction::Backward => (Rule::TypeNarrowed, "narrowed"),
                    Direction::Forward => (Rule::TypeWidened, "widened"),
                };
                self.issue(
                    rule,
                    path,
                    format!(
                        "{} was {verb} from {} to {}",
                        subject(path),
                        old.describe(),
                        new.describe()
                    ),
                    d.writes_rejected("numbers with a fraction", "them"),
                );
            } else {
                self.issue(
                    Rule::TypeChanged,
                    path,
                    format!(
                        "{} changed type from {} to {}",
                        subject(path),
                        old.describe(),
                        new.describe()
                    ),
                    d.writes_rejected(format_args!("{} there", other.describe_values()), "it"),
                );
            }
        }
        let shared = writer_types.without(rejected);
        if shared.is_empty() {
            return;
        }

        let writer_values = values(writer).map(|values| {
            values
                .into_iter()
                .filter(|v| shared.accepts(Types::of_value(v)))
                .collect::<Vec<_>>()
        });
        if let Some(reader_values) = values(reader) {
            match &writer_values {
                Some(writer_values) => {
                    for value in writer_values {
                        if !reader_values.iter().any(|r| same_value(r, value)) {
                            let (rule, what) = match d {
                                Direction::Backward => (
                                    Rule::EnumValueRemoved,
                                    format!(
                                        "value {} of {} was removed",
                                        show(value),
                                        subject(path)
                                    ),
                                ),
                                Direction::Forward => (
                                    Rule::EnumValueAdded,
                                    format!("value {} of {} was added", show(value), subject(path)),
                                ),
                            };
                            self.issue(rule, path, what, d.writes_rejected("it", "it"));
                        }
                    }
                }
                None => {
                    let list = reader_values
                        .iter()
                        .map(show)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let (rule, what) = match d {
                        Direction::Backward => (
                            Rule::ValuesRestricted,
                            format!("{} was restricted to the values {list}", subject(path)),
                        ),
                        Direction::Forward => (
                            Rule::ValuesUnrestricted,
                            format!(
                                "{} is no longer restricted to the values {list}",
                                subject(path)
                            ),
                        ),
                    };
                    self.issue(rule, path, what, d.writes_rejected("other values", "them"));
                }
            }
        }
        if writer_values.is_some() {
            return;
        }

        if shared.contains(Types::NUMBER) || shared.contains(Types::INTEGER) {
            self.numbers(writer, reader, path);
        }
        if shared.contains(Types::STRING) {
            self.strings(writer, reader, path);
        }
        if shared.contains(Types::ARRAY) {
            self.arrays(writer, reader, path);
        }
        if shared.contains(Types::OBJECT) {
            self.objects(writer, reader, path);
        }
    }

    fn numbers(&mut self, writer: &Map<String, Value>, reader: &Map<String, Value>, path: &str) {
        let d = self.direction;
        let w = Range::numeric(writer);
        let r = Range::numeric(reader);
        if !r.contains(&w) {
            let (old, new) = d.old_new(&w, &r);
            let (rule, verb) = range_verb(d);
            let what = match (&old.format, &new.format) {
                (Some(o), Some(n)) if o != n => {
                    format!("{} was {verb} from {o} to {n}", subject(path))
                }
                _ => format!(
                    "the range of {} was {verb} from {} to {}",
                    subject(path),
                    old.describe(),
                    new.describe()
                ),
            };
            self.issue(rule, path, what, d.writes_outside("numbers"));
        }
        if let Some(step) = reader.get("multipleOf").and_then(Value::as_f64) {
            let fits = writer
                .get("multipleOf")
                .and_then(Value::as_f64)
                .is_some_and(|w| step > 0.0 && (w / step).fract() == 0.0);
            if !fits {
                let (old, new) = d.old_new(writer.get("multipleOf"), reader.get("multipleOf"));
                let (rule, verb) = constraint_verb(d);
                self.issue(
                    rule,
                    path,
                    format!(
                        "`multipleOf` of {} was {verb}: {} before, {} now",
                        subject(path),
                        show_opt(old),
                        show_opt(new)
                    ),
                    d.writes_outside("numbers"),
                );
            }
        }
    }

    fn strings(&mut self, writer: &Map<String, Value>, reader: &Map<String, Value>, path: &str) {
        let d = self.direction;
        let string_format = |m: &Map<String, Value>| {
            m.get("format")
                .and_then(Value::as_str)
                .filter(|f| numeric_format(f).is_none())
                .map(str::to_owned)
        };
        let (writer_format, reader_format) = (string_format(writer), string_format(reader));
        if let Some(required) = &reader_format {
            if writer_format.as_ref() != Some(required) {
                let (old, new) = d.old_new(&writer_format, &reader_format);
                let what = changed_words("format", old.as_deref(), new.as_deref(), path);
                self.issue(
                    Rule::FormatChanged,
                    path,
                    what,
                    d.writes_rejected(format_args!("strings that are not `{required}`"), "them"),
                );
            }
        }
        let pattern =
            |m: &Map<String, Value>| m.get("pattern").and_then(Value::as_str).map(str::to_owned);
        let (writer_pattern, reader_pattern) = (pattern(writer), pattern(reader));
        if let Some(required) = &reader_pattern {
            if writer_pattern.as_ref() != Some(required) {
                let (old, new) = d.old_new(&writer_pattern, &reader_pattern);
                let what = changed_words("pattern", old.as_deref(), new.as_deref(), path);
                self.issue(
                    Rule::PatternChanged,
                    path,
                    what,
                    d.writes_rejected(
                        format_args!("strings that do not match `{required}`"),
                        "them",
                    ),
                );
            }
        }
        let w = Range::counts(writer, "minLength", "maxLength");
        let r = Range::counts(reader, "minLength", "maxLength");
        if !r.contains(&w) {
            let (old, new) = d.old_new(&w, &r);
            let (rule, verb) = range_verb(d);
            self.issue(
                rule,
                path,
                format!(
                    "the allowed length of {} was {verb} from {} to {}",
                    subject(path),
                    old.describe(),
                    new.describe()
                ),
                format!(
                    "{} may write strings whose length {} reject",
                    d.producers(),
                    d.consumers()
                ),
            );
        }
    }

    fn arrays(&mut self, writer: &Map<String, Value>, reader: &Map<String, Value>, path: &str) {
        let d = self.direction;
        let any = Value::Bool(true);
        let empty = Vec::new();
        let writer_prefix = writer
            .get("prefixItems")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let reader_prefix = reader
            .get("prefixItems")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let writer_items = writer.get("items").unwrap_or(&any);
        let reader_items = reader.get("items").unwrap_or(&any);
        let writer_max = writer.get("maxItems").and_then(Value::as_u64);
        for i in 0..writer_prefix.len().max(reader_prefix.len()) {
            if writer_max.is_some_and(|max| (i as u64) >= max) {
                break;
            }
            let w = writer_prefix.get(i).unwrap_or(writer_items);
            let r = reader_prefix.get(i).unwrap_or(reader_items);
            self.compare(w, r, &format!("{path}[{i}]"));
        }
        self.compare(writer_items, reader_items, &format!("{path}[]"));

        let w = Range::counts(writer, "minItems", "maxItems");
        let r = Range::counts(reader, "minItems", "maxItems");
        if !r.contains(&w) {
            let (old, new) = d.old_new(&w, &r);
            let (rule, verb) = range_verb(d);
            self.issue(
                rule,
                path,
                format!(
                    "the allowed number of items of {} was {verb} from {} to {}",
                    subject(path),
                    old.describe(),
                    new.describe()
                ),
                d.writes_outside("lists"),
            );
        }
        let unique = |m: &Map<String, Value>| m.get("uniqueItems") == Some(&Value::Bool(true));
        if unique(reader) && !unique(writer) {
            let (rule, what) = match d {
                Direction::Backward => (
                    Rule::ConstraintTightened,
                    format!("the items of {} must now be unique", subject(path)),
                ),
                Direction::Forward => (
                    Rule::ConstraintLoosened,
                    format!("the items of {} no longer need to be unique", subject(path)),
                ),
            };
            self.issue(
                rule,
                path,
                what,
                d.writes_rejected("repeated items", "them"),
            );
        }
    }

    fn objects(&mut self, writer: &Map<String, Value>, reader: &Map<String, Value>, path: &str) {
        let d = self.direction;
        let empty = Map::new();
        let writer_properties = writer
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let reader_properties = reader
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let writer_required = required(writer);
        let reader_required = required(reader);
        let writer_rest = Additional::of(writer);
        let reader_rest = Additional::of(reader);

        for name in &reader_required {
            if writer_required.contains(name) {
                continue;
            }
            let field = child(path, name);
            let listed = writer_properties.contains_key(name.as_str());
            let (rule, what, why) = match (d, listed) {
                (Direction::Backward, false) => (
                    Rule::RequiredFieldAdded,
                    format!("field `{field}` was added as required"),
                    format!(
                        "{} reject messages from {}, which do not write it",
                        d.consumers(),
                        d.producers()
                    ),
                ),
                (Direction::Backward, true) => (
                    Rule::FieldMadeRequired,
                    format!("field `{field}` was made required"),
                    format!(
                        "{} reject messages from {} that leave it out",
                        d.consumers(),
                        d.producers()
                    ),
                ),
                (Direction::Forward, false) => (
                    Rule::RequiredFieldRemoved,
                    format!("required field `{field}` was removed"),
                    format!(
                        "{} require it and reject messages from {}, which no longer write it",
                        d.consumers(),
                        d.producers()
                    ),
                ),
                (Direction::Forward, true) => (
                    Rule::FieldMadeOptional,
                    format!("field `{field}` was made optional"),
                    format!(
                        "{} require it and reject messages from {} that leave it out",
                        d.consumers(),
                        d.producers()
                    ),
                ),
            };
            self.issue(rule, &field, what, why);
        }

        // Sorted, so the report reads the same whatever order the map keeps.
        let mut writer_properties: Vec<(&String, &Value)> = writer_properties.iter().collect();
        writer_properties.sort_by_key(|(name, _)| *name);
        for (name, writer_schema) in writer_properties {
            let field = child(path, name);
            if let Some(reader_schema) = reader_properties.get(name) {
                self.compare(writer_schema, reader_schema, &field);
                continue;
            }
            match &reader_rest {
                Additional::Closed => {
                    let (rule, what, why) = match d {
                        Direction::Backward => (
                            Rule::FieldRemoved,
                            format!(
                                "field `{field}` was removed, and the new schema forbids fields it does not list"
                            ),
                            format!(
                                "{} reject messages from {}, which still write it",
                                d.consumers(),
                                d.producers()
                            ),
                        ),
                        Direction::Forward => (
                            Rule::FieldAdded,
                            format!(
                                "field `{field}` was added, but the old schema forbids fields it does not list"
                            ),
                            format!(
                                "{} reject messages from {}, which write it",
                                d.consumers(),
                                d.producers()
                            ),
                        ),
                    };
                    self.issue(rule, &field, what, why);
                }
                Additional::Schema(reader_schema) => {
                    let reader_schema = reader_schema.clone();
                    self.compare(writer_schema, &reader_schema, &field);
                }
                Additional::Open => {}
            }
        }

        match (&writer_rest, &reader_rest) {
            (Additional::Open | Additional::Schema(_), Additional::Closed) => {
                let place = if path.is_empty() {
                    "the event".to_owned()
                } else {
                    format!("`{path}`")
                };
                let (rule, what) = match d {
                    Direction::Backward => (
                        Rule::ObjectClosed,
                        format!(
                            "{place} was closed to fields it does not list (`additionalProperties: false`)"
                        ),
                    ),
                    Direction::Forward => (
                        Rule::ObjectOpened,
                        format!(
                            "{place} was opened to fields it does not list (`additionalProperties: false` was dropped)"
                        ),
                    ),
                };
                self.issue(
                    rule,
                    path,
                    what,
                    d.writes_rejected("fields the schema does not list", "them"),
                );
            }
            (Additional::Schema(w), Additional::Schema(r)) => {
                let (w, r) = (w.clone(), r.clone());
                self.compare(&w, &r, &child(path, "*"));
            }
            (Additional::Open, Additional::Schema(r)) => {
                let r = r.clone();
                self.compare(&Value::Bool(true), &r, &child(path, "*"));
            }
            _ => {}
        }
    }
}

fn range_verb(direction: Direction) -> (Rule, &'static str) {
    match direction {
        Direction::Backward => (Rule::RangeNarrowed, "narrowed"),
        Direction::Forward => (Rule::RangeWidened, "widened"),
    }
}

fn constraint_verb(direction: Direction) -> (Rule, &'static str) {
    match direction {
        Direction::Backward => (Rule::ConstraintTightened, "tightened"),
        Direction::Forward => (Rule::ConstraintLoosened, "loosened"),
    }
}

fn changed_words(what: &str, old: Option<&str>, new: Option<&str>, path: &str) -> String {
    match (old, new) {
        (None, Some(new)) => format!("{what} `{new}` was added to {}", subject(path)),
        (Some(old), None) => format!("{what} `{old}` was removed from {}", subject(path)),
        (Some(old), Some(new)) => {
            format!(
                "the {what} of {} changed from `{old}` to `{new}`",
                subject(path)
            )
        }
        (None, None) => format!("the {what} of {} changed", subject(path)),
    }
}

/// `field `a.b`` or `the event`.
fn subject(path: &str) -> String {
    if path.is_empty() {
        "the event".to_owned()
    } else {
        format!("field `{path}`")
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn show(value: &Value) -> String {
    format!("`{value}`")
}

fn show_opt(value: Option<&Value>) -> String {
    value.map_or_else(|| "none".to_owned(), show)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn required(schema: &Map<String, Value>) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn values(schema: &Map<String, Value>) -> Option<Vec<Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value.clone()]);
    }
    schema.get("enum").and_then(Value::as_array).cloned()
}

fn union(schema: &Map<String, Value>) -> Option<&Vec<Value>> {
    schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
}

fn without_union(schema: &Map<String, Value>) -> Map<String, Value> {
    let mut rest = schema.clone();
    if rest.remove("anyOf").is_none() {
        rest.remove("oneOf");
    }
    rest
}

/// `writer` with only the type `t`, its values filtered to match.
fn restrict(writer: &Map<String, Value>, t: Types, all: Types) -> Option<Map<String, Value>> {
    let mut part = writer.clone();
    // `number` covers `integer`: keep both together.
    let keep = if t == Types::NUMBER && all.contains(Types::INTEGER) {
        Types::NUMBER.with(Types::INTEGER)
    } else {
        t
    };
    part.insert("type".into(), keep.to_json());
    if let Some(values) = values(writer) {
        let kept: Vec<Value> = values
            .into_iter()
            .filter(|v| keep.accepts(Types::of_value(v)))
            .collect();
        if kept.is_empty() {
            return None;
        }
        part.remove("const");
        part.insert("enum".into(), Value::Array(kept));
    }
    Some(part)
}

/// Keywords that describe and never reject.
fn is_annotation(key: &str) -> bool {
    key.starts_with("x-")
        || matches!(
            key,
            "title"
                | "description"
                | "default"
                | "examples"
                | "deprecated"
                | "readOnly"
                | "writeOnly"
                | "$comment"
                | "$schema"
                | "$id"
                | "$anchor"
                | "$defs"
                | "definitions"
        )
}

fn has_constraints(schema: &Map<String, Value>) -> bool {
    schema.keys().any(|k| !is_annotation(k))
}

/// A copy of `schema` without annotations, to compare two schemas' meaning.
fn strip_annotations(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(k, _)| !is_annotation(k) || *k == "$defs")
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("enum" | "const", _) => v.clone(),
                        (key, Value::Object(schemas)) if super::is_schema_map(key) => {
                            Value::Object(
                                schemas
                                    .iter()
                                    .map(|(name, s)| (name.clone(), strip_annotations(s)))
                                    .collect(),
                            )
                        }
                        _ => strip_annotations(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_annotations).collect()),
        other => other.clone(),
    }
}

/// Follows `$ref`s and merges `allOf` until neither is left at the top.
fn normalize(schema: &Value, root: &Value, hops: usize) -> Result<Value, String> {
    if hops > MAX_REF_HOPS {
        return Err("its `$ref`s refer to each other in a loop".to_owned());
    }
    let Value::Object(object) = schema else {
        return Ok(schema.clone());
    };
    if let Some(target) = object.get("$ref") {
        let target = target
            .as_str()
            .ok_or_else(|| "a `$ref` is not a string".to_owned())?;
        let resolved = lookup(root, target)?;
        let siblings: Map<String, Value> = object
            .iter()
            .filter(|(k, _)| *k != "$ref" && !is_annotation(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let combined = if siblings.is_empty() {
            resolved.clone()
        } else {
            merge_all(
                vec![resolved.clone(), Value::Object(siblings)],
                root,
                hops + 1,
            )?
        };
        return normalize(&combined, root, hops + 1);
    }
    if let Some(parts) = object.get("allOf").and_then(Value::as_array) {
        let mut all: Vec<Value> = parts.clone();
        let mut rest = object.clone();
        rest.remove("allOf");
        all.push(Value::Object(rest));
        let merged = merge_all(all, root, hops + 1)?;
        return normalize(&merged, root, hops + 1);
    }
    Ok(schema.clone())
}

fn lookup<'v>(root: &'v Value, target: &str) -> Result<&'v Value, String> {
    let Some(pointer) = target.strip_prefix('#') else {
        return Err(format!(
            "`$ref` `{target}` points outside the schema, which an export never does"
        ));
    };
    let pointer = percent_decode(pointer);
    root.pointer(&pointer)
        .ok_or_else(|| format!("`$ref` `{target}` points to nothing"))
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One schema that accepts what all of `parts` accept (closely enough for this check):
/// types, properties, `required`, values and bounds are intersected; other keywords are
/// taken from the first part that has them.
fn merge_all(parts: Vec<Value>, root: &Value, hops: usize) -> Result<Value, String> {
    let mut merged = Map::new();
    for part in parts {
        let part = normalize(&part, root, hops + 1)?;
        let part = match part {
            Value::Bool(true) => continue,
            Value::Bool(false) => return Ok(Value::Bool(false)),
            Value::Object(part) => part,
            _ => continue,
        };
        for (key, value) in part {
            let merged_value = match (key.as_str(), merged.remove(&key)) {
                (_, None) => value,
                ("type", Some(existing)) => {
                    let both = Types::from_type(&existing).intersect(Types::from_type(&value));
                    both.to_json()
                }
                ("properties", Some(Value::Object(mut existing))) => {
                    if let Value::Object(more) = value {
                        for (name, schema) in more {
                            let combined = match existing.remove(&name) {
                                Some(first) => {
                                    serde_json::json!({ "allOf": [first, schema] })
                                }
                                None => schema,
                            };
                            existing.insert(name, combined);
                        }
                    }
                    Value::Object(existing)
                }
                ("required", Some(Value::Array(mut existing))) => {
                    if let Value::Array(more) = value {
                        for name in more {
                            if !existing.contains(&name) {
                                existing.push(name);
                            }
                        }
                    }
                    Value::Array(existing)
                }
                ("additionalProperties", Some(existing)) => {
                    if existing == Value::Bool(false) || value == Value::Bool(false) {
                        Value::Bool(false)
                    } else {
                        existing
                    }
                }
                ("enum", Some(Value::Array(existing))) => {
                    let more = value.as_array().cloned().unwrap_or_default();
                    Value::Array(
                        existing
                            .into_iter()
                            .filter(|v| more.iter().any(|m| same_value(m, v)))
                            .collect(),
                    )
                }
                ("minimum" | "exclusiveMinimum" | "minLength" | "minItems", Some(existing)) => {
                    max_number(existing, value)
                }
                ("maximum" | "exclusiveMaximum" | "maxLength" | "maxItems", Some(existing)) => {
                    min_number(existing, value)
                }
                (_, Some(existing)) => existing,
            };
            merged.insert(key, merged_value);
        }
    }
    Ok(Value::Object(merged))
}

fn max_number(a: Value, b: Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if y > x => b,
        _ => a,
    }
}

fn min_number(a: Value, b: Value) -> Value {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if y < x => b,
        _ => a,
    }
}

/// What `additionalProperties` allows.
enum Additional {
    Open,
    Closed,
    Schema(Value),
}

impl Additional {
    fn of(schema: &Map<String, Value>) -> Self {
        match schema.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Self::Open,
            Some(Value::Bool(false)) => Self::Closed,
            Some(Value::Object(o)) if !has_constraints(o) => Self::Open,
            Some(other) => Self::Schema(other.clone()),
        }
    }
}

/// A set of JSON types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Types(u8);

impl Types {
    const EMPTY: Self = Self(0);
    const NULL: Self = Self(1);
    const BOOLEAN: Self = Self(2);
    const OBJECT: Self = Self(4);
    const ARRAY: Self = Self(8);
    const NUMBER: Self = Self(16);
    const INTEGER: Self = Self(32);
    const STRING: Self = Self(64);
    const ALL: Self = Self(127);
    /// In the order they are named.
    const EACH: [(Self, &'static str); 7] = [
        (Self::OBJECT, "object"),
        (Self::ARRAY, "array"),
        (Self::STRING, "string"),
        (Self::INTEGER, "integer"),
        (Self::NUMBER, "number"),
        (Self::BOOLEAN, "boolean"),
        (Self::NULL, "null"),
    ];

    fn of(schema: &Map<String, Value>) -> Self {
        if let Some(t) = schema.get("type") {
            let types = Self::from_type(t);
            return if types.is_empty() { Self::ALL } else { types };
        }
        if let Some(values) = values(schema) {
            return values
                .iter()
                .fold(Self::EMPTY, |acc, v| acc.with(Self::of_value(v)));
        }
        Self::ALL
    }

    fn from_type(value: &Value) -> Self {
        let named = |name: &str| {
            Self::EACH
                .iter()
                .find(|(_, n)| *n == name)
                .map_or(Self::EMPTY, |(t, _)| *t)
        };
        match value {
            Value::String(name) => named(name),
            Value::Array(names) => names
                .iter()
                .filter_map(Value::as_str)
                .fold(Self::EMPTY, |acc, n| acc.with(named(n))),
            _ => Self::ALL,
        }
    }

    fn of_value(value: &Value) -> Self {
        match value {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOLEAN,
            Value::Number(n) if n.is_i64() || n.is_u64() => Self::INTEGER,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Self::INTEGER,
            Value::Number(_) => Self::NUMBER,
            Value::String(_) => Self::STRING,
            Value::Array(_) => Self::ARRAY,
            Value::Object(_) => Self::OBJECT,
        }
    }

    fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether a value of type(s) `t` is allowed: `integer` is a `number`.
    fn accepts(self, t: Self) -> bool {
        Self::EACH.iter().all(|(one, _)| {
            !t.contains(*one)
                || self.contains(*one)
                || (*one == Self::INTEGER && self.contains(Self::NUMBER))
        }) && t.0 != 0
    }

    fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    fn intersect(self, other: Self) -> Self {
        let mut both = Self(self.0 & other.0);
        // `integer` is within `number`.
        if self.contains(Self::INTEGER) && other.contains(Self::NUMBER)
            || other.contains(Self::INTEGER) && self.contains(Self::NUMBER)
        {
            both = both.with(Self::INTEGER);
        }
        both
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn count(self) -> usize {
        // `number` covers `integer`.
        let t = if self.contains(Self::NUMBER) {
            self.without(Self::INTEGER)
        } else {
            self
        };
        t.0.count_ones() as usize
    }

    fn iter(self) -> impl Iterator<Item = Self> {
        Self::EACH
            .into_iter()
            .map(|(t, _)| t)
            .filter(move |t| self.contains(*t))
    }

    fn names(self) -> Vec<&'static str> {
        let t = if self.contains(Self::NUMBER) {
            self.without(Self::INTEGER)
        } else {
            self
        };
        Self::EACH
            .iter()
            .filter(|(one, _)| t.contains(*one))
            .map(|(_, name)| *name)
            .collect()
    }

    fn describe(self) -> String {
        if self == Self::ALL {
            return "any type".to_owned();
        }
        self.names().join(" or ")
    }

    fn describe_values(self) -> String {
        let names: Vec<String> = self
            .names()
            .into_iter()
            .map(|n| match n {
                "null" => "null".to_owned(),
                "integer" => "integers".to_owned(),
                "number" => "numbers".to_owned(),
                "boolean" => "booleans".to_owned(),
                "string" => "strings".to_owned(),
                "object" => "objects".to_owned(),
                "array" => "arrays".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        names.join(" or ")
    }

    fn to_json(self) -> Value {
        let names: Vec<&str> = Self::EACH
            .iter()
            .filter(|(one, _)| self.contains(*one))
            .map(|(_, name)| *name)
            .collect();
        match names.as_slice() {
            [one] => Value::String((*one).to_owned()),
            _ => Value::Array(
                names
                    .into_iter()
                    .map(|n| Value::String(n.to_owned()))
                    .collect(),
            ),
        }
    }
}

/// Bounds of the integer and float formats schemars writes for Rust's number types.
fn numeric_format(format: &str) -> Option<(f64, f64)> {
    Some(match format {
        "int8" => (f64::from(i8::MIN), f64::from(i8::MAX)),
        "int16" => (f64::from(i16::MIN), f64::from(i16::MAX)),
        "int32" => (f64::from(i32::MIN), f64::from(i32::MAX)),
        "int64" | "int" => (i64::MIN as f64, i64::MAX as f64),
        "int128" => (i128::MIN as f64, i128::MAX as f64),
        "uint8" => (0.0, f64::from(u8::MAX)),
        "uint16" => (0.0, f64::from(u16::MAX)),
        "uint32" => (0.0, f64::from(u32::MAX)),
        "uint64" | "uint" => (0.0, u64::MAX as f64),
        "uint128" => (0.0, u128::MAX as f64),
        "float" => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        "double" => (f64::MIN, f64::MAX),
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Bound {
    value: f64,
    exclusive: bool,
}

/// The values a number, a length or an item count may take.
#[derive(Clone, Debug, PartialEq)]
struct Range {
    low: Option<Bound>,
    high: Option<Bound>,
    format: Option<String>,
}

impl Range {
    fn numeric(schema: &Map<String, Value>) -> Self {
        let mut range = Self {
            low: None,
            high: None,
            format: None,
        };
        if let Some(format) = schema.get("format").and_then(Value::as_str) {
            if let Some((low, high)) = numeric_format(format) {
                range.format = Some(format.to_owned());
                // A double holds any JSON number a parser reads.
                if format != "double" {
                    range.raise(Bound {
                        value: low,
                        exclusive: false,
                    });
                    range.lower(Bound {
                        value: high,
                        exclusive: false,
                    });
                }
            }
        }
        let number = |key: &str| schema.get(key).and_then(Value::as_f64);
        if let Some(value) = number("minimum") {
            range.raise(Bound {
                value,
                exclusive: false,
            });
        }
        if let Some(value) = number("exclusiveMinimum") {
            range.raise(Bound {
                value,
                exclusive: true,
            });
        }
        if let Some(value) = number("maximum") {
            range.lower(Bound {
                value,
                exclusive: false,
            });
        }
        if let Some(value) = number("exclusiveMaximum") {
            range.lower(Bound {
                value,
                exclusive: true,
            });
        }
        range
    }

    fn counts(schema: &Map<String, Value>, min: &str, max: &str) -> Self {
        let mut range = Self {
            low: None,
            high: None,
            format: None,
        };
        if let Some(value) = schema.get(min).and_then(Value::as_f64) {
            if value > 0.0 {
                range.raise(Bound {
                    value,
                    exclusive: false,
                });
            }
        }
        if let Some(value) = schema.get(max).and_then(Value::as_f64) {
            range.lower(Bound {
                value,
                exclusive: false,
            });
        }
        range
    }

    fn raise(&mut self, bound: Bound) {
        let tighter = match self.low {
            None => true,
            Some(low) => bound.value > low.value || (bound.value == low.value && bound.exclusive),
        };
        if tighter {
            self.low = Some(bound);
        }
    }

    fn lower(&mut self, bound: Bound) {
        let tighter = match self.high {
            None => true,
            Some(high) => {
                bound.value < high.value || (bound.value == high.value && bound.exclusive)
            }
        };
        if tighter {
            self.high = Some(bound);
        }
    }

    /// Whether every value within `other` is within `self`.
    fn contains(&self, other: &Self) -> bool {
        let low_ok = match (self.low, other.low) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                theirs.value > mine.value
                    || (theirs.value == mine.value && (!mine.exclusive || theirs.exclusive))
            }
        };
        let high_ok = match (self.high, other.high) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => {
                theirs.value < mine.value
                    || (theirs.value == mine.value && (!mine.exclusive || theirs.exclusive))
            }
        };
        low_ok && high_ok
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(low) = self.low {
            let word = if low.exclusive {
                "more than"
            } else {
                "at least"
            };
            parts.push(format!("{word} {}", number(low.value)));
        }
        if let Some(high) = self.high {
            let word = if high.exclusive {
                "less than"
            } else {
                "at most"
            };
            parts.push(format!("{word} {}", number(high.value)));
        }
        let bounds = if parts.is_empty() {
            "any size".to_owned()
        } else {
            parts.join(" and ")
        };
        match &self.format {
            Some(format) => format!("{format} ({bounds})"),
            None => bounds,
        }
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e16 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests;
