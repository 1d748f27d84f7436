//! One test per rule, in both directions where the direction matters.

use serde_json::{Value, json};

use super::*;

const EVENT: &str = "orders.order-placed";

/// An object schema with `properties`, `required` and optional extra keywords.
fn object(properties: Value, required: &[&str]) -> Value {
    let mut schema = json!({ "type": "object", "required": required });
    schema["properties"] = properties;
    schema
}

fn closed(mut schema: Value) -> Value {
    schema["additionalProperties"] = json!(false);
    schema
}

fn found(old: &Value, new: &Value, mode: Mode) -> Vec<BreakingChange> {
    check_schema(EVENT, 1, old, new, mode)
}

fn rules(old: &Value, new: &Value, mode: Mode) -> Vec<Rule> {
    found(old, new, mode).iter().map(|c| c.rule).collect()
}

fn text(old: &Value, new: &Value, mode: Mode) -> Vec<String> {
    found(old, new, mode)
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn field(schema: Value) -> Value {
    let mut properties = json!({ "order_id": { "type": "string" } });
    properties["x"] = schema;
    object(properties, &["order_id", "x"])
}

#[test]
fn identical_schemas_are_compatible_in_every_mode() {
    let schema = object(
        json!({ "order_id": { "type": "string" }, "total": { "type": "integer", "format": "uint64", "minimum": 0 } }),
        &["order_id", "total"],
    );
    for mode in [Mode::Backward, Mode::Forward, Mode::Full] {
        assert_eq!(found(&schema, &schema, mode), [], "{mode}");
    }
}

#[test]
fn optional_field_added_is_compatible_unless_the_old_schema_is_closed() {
    let old = object(json!({ "order_id": { "type": "string" } }), &["order_id"]);
    let new = object(
        json!({ "order_id": { "type": "string" }, "note": { "type": "string" } }),
        &["order_id"],
    );
    assert_eq!(rules(&old, &new, Mode::Full), []);
    assert_eq!(
        rules(&closed(old.clone()), &closed(new.clone()), Mode::Backward),
        []
    );
    assert_eq!(
        text(&closed(old), &closed(new), Mode::Forward),
        [
            "orders.order-placed v1: field `note` was added, but the old schema forbids fields it does not list: consumers still on the old schema reject messages from producers on the new schema, which write it"
        ]
    );
}

#[test]
fn required_field_added_breaks_backward() {
    let old = object(json!({ "order_id": { "type": "string" } }), &["order_id"]);
    let new = object(
        json!({ "order_id": { "type": "string" }, "currency": { "type": "string" } }),
        &["order_id", "currency"],
    );
    assert_eq!(
        text(&old, &new, Mode::Backward),
        [
            "orders.order-placed v1: field `currency` was added as required: consumers on the new schema reject messages from producers still on the old schema, which do not write it"
        ]
    );
    assert_eq!(rules(&old, &new, Mode::Forward), []);
    assert_eq!(
        rules(&closed(old), &closed(new), Mode::Forward),
        [Rule::FieldAdded]
    );
}

#[test]
fn field_removed_breaks_forward_when_required_and_backward_when_closed() {
    let old = object(
        json!({ "order_id": { "type": "string" }, "total": { "type": "integer" }, "note": { "type": "string" } }),
        &["order_id", "total"],
    );
    let without_total = object(
        json!({ "order_id": { "type": "string" }, "note": { "type": "string" } }),
        &["order_id"],
    );
    assert_eq!(rules(&old, &without_total, Mode::Backward), []);
    assert_eq!(
        text(&old, &without_total, Mode::Forward),
        [
            "orders.order-placed v1: required field `total` was removed: consumers still on the old schema require it and reject messages from producers on the new schema, which no longer write it"
        ]
    );

    // An optional field: only a closed new schema minds.
    let without_note = object(
        json!({ "order_id": { "type": "string" }, "total": { "type": "integer" } }),
        &["order_id", "total"],
    );
    assert_eq!(rules(&old, &without_note, Mode::Full), []);
    assert_eq!(
        text(&closed(old), &closed(without_note), Mode::Backward),
        [
            "orders.order-placed v1: field `note` was removed, and the new schema forbids fields it does not list: consumers on the new schema reject messages from producers still on the old schema, which still write it"
        ]
    );
}

#[test]
fn field_renamed_is_a_removal_and_an_addition() {
    let old = object(
        json!({ "total_cents": { "type": "integer" } }),
        &["total_cents"],
    );
    let new = object(
        json!({ "amount_cents": { "type": "integer" } }),
        &["amount_cents"],
    );
    let backward = found(&old, &new, Mode::Backward);
    assert_eq!(backward.len(), 1);
    assert_eq!(backward[0].rule, Rule::RequiredFieldAdded);
    assert_eq!(backward[0].field.as_deref(), Some("amount_cents"));
    let forward = found(&old, &new, Mode::Forward);
    assert_eq!(forward.len(), 1);
    assert_eq!(forward[0].rule, Rule::RequiredFieldRemoved);
    assert_eq!(forward[0].field.as_deref(), Some("total_cents"));
    assert_eq!(
        rules(&old, &new, Mode::Full),
        [Rule::RequiredFieldAdded, Rule::RequiredFieldRemoved]
    );
}

#[test]
fn field_made_required_and_made_optional() {
    let optional = object(
        json!({ "a": { "type": "string" }, "b": { "type": "string" } }),
        &["a"],
    );
    let required = object(
        json!({ "a": { "type": "string" }, "b": { "type": "string" } }),
        &["a", "b"],
    );
    assert_eq!(
        rules(&optional, &required, Mode::Backward),
        [Rule::FieldMadeRequired]
    );
    assert_eq!(rules(&optional, &required, Mode::Forward), []);
    assert_eq!(rules(&required, &optional, Mode::Backward), []);
    assert_eq!(
        text(&required, &optional, Mode::Forward),
        [
            "orders.order-placed v1: field `b` was made optional: consumers still on the old schema require it and reject messages from producers on the new schema that leave it out"
        ]
    );
}

#[test]
fn type_changed_breaks_both_ways() {
    let old = field(json!({ "type": "string" }));
    let new = field(json!({ "type": "integer" }));
    assert_eq!(
        text(&old, &new, Mode::Backward),
        [
            "orders.order-placed v1: field `x` changed type from string to integer: producers still on the old schema may write strings there, and consumers on the new schema reject it"
        ]
    );
    assert_eq!(
        text(&old, &new, Mode::Forward),
        [
            "orders.order-placed v1: field `x` changed type from string to integer: producers on the new schema may write integers there, and consumers still on the old schema reject it"
        ]
    );
    assert_eq!(
        rules(&old, &new, Mode::Full),
        [Rule::TypeChanged, Rule::TypeChanged]
    );
}

#[test]
fn integer_widened_to_number_breaks_forward() {
    let integer = field(json!({ "type": "integer" }));
    let number = field(json!({ "type": "number" }));
    assert_eq!(rules(&integer, &number, Mode::Backward), []);
    assert_eq!(
        text(&integer, &number, Mode::Forward),
        [
            "orders.order-placed v1: field `x` was widened from integer to number: producers on the new schema may write numbers with a fraction, and consumers still on the old schema reject them"
        ]
    );
}

#[test]
fn number_narrowed_to_integer_breaks_backward() {
    let number = field(json!({ "type": "number" }));
    let integer = field(json!({ "type": "integer" }));
    assert_eq!(
        rules(&number, &integer, Mode::Backward),
        [Rule::TypeNarrowed]
    );
    assert!(
        text(&number, &integer, Mode::Backward)[0]
            .contains("field `x` was narrowed from number to integer")
    );
    assert_eq!(rules(&number, &integer, Mode::Forward), []);
}

#[test]
fn integer_formats_are_ranges() {
    let u32_ = field(json!({ "type": "integer", "format": "uint32", "minimum": 0 }));
    let u64_ = field(json!({ "type": "integer", "format": "uint64", "minimum": 0 }));
    let i64_ = field(json!({ "type": "integer", "format": "int64" }));
    assert_eq!(rules(&u32_, &u64_, Mode::Backward), []);
    assert_eq!(
        text(&u32_, &u64_, Mode::Forward),
        [
            "orders.order-placed v1: field `x` was widened from uint32 to uint64: producers on the new schema may write numbers that consumers still on the old schema reject"
        ]
    );
    assert_eq!(rules(&u64_, &u32_, Mode::Backward), [Rule::RangeNarrowed]);
    assert_eq!(rules(&u64_, &u32_, Mode::Forward), []);
    // Signed 64-bit holds every unsigned 32-bit value, not every unsigned 64-bit one.
    assert_eq!(rules(&u32_, &i64_, Mode::Full), [Rule::RangeWidened]);
    assert_eq!(rules(&u64_, &i64_, Mode::Backward), [Rule::RangeNarrowed]);
}

#[test]
fn float_and_double() {
    let float = field(json!({ "type": "number", "format": "float" }));
    let double = field(json!({ "type": "number", "format": "double" }));
    assert_eq!(rules(&float, &double, Mode::Backward), []);
    assert_eq!(rules(&float, &double, Mode::Forward), [Rule::RangeWidened]);
    assert_eq!(
        rules(&double, &float, Mode::Backward),
        [Rule::RangeNarrowed]
    );
    // A double and an unformatted number are the same to a JSON reader.
    assert_eq!(
        rules(&double, &field(json!({ "type": "number" })), Mode::Full),
        []
    );
}

#[test]
fn minimum_and_maximum() {
    let any = field(json!({ "type": "integer" }));
    let positive = field(json!({ "type": "integer", "exclusiveMinimum": 0 }));
    let at_least_one = field(json!({ "type": "integer", "minimum": 1 }));
    let small = field(json!({ "type": "integer", "minimum": 1, "maximum": 10 }));
    assert_eq!(
        text(&any, &positive, Mode::Backward),
        [
            "orders.order-placed v1: the range of field `x` was narrowed from any size to more than 0: producers still on the old schema may write numbers that consumers on the new schema reject"
        ]
    );
    assert_eq!(rules(&any, &positive, Mode::Forward), []);
    // For integers the two say the same, but bounds are compared as written.
    assert_eq!(rules(&at_least_one, &positive, Mode::Backward), []);
    assert_eq!(
        rules(&at_least_one, &small, Mode::Backward),
        [Rule::RangeNarrowed]
    );
    assert_eq!(
        text(&small, &at_least_one, Mode::Forward),
        [
            "orders.order-placed v1: the range of field `x` was widened from at least 1 and at most 10 to at least 1: producers on the new schema may write numbers that consumers still on the old schema reject"
        ]
    );
}

#[test]
fn multiple_of() {
    let cents = field(json!({ "type": "number", "multipleOf": 0.01 }));
    let whole = field(json!({ "type": "number", "multipleOf": 1 }));
    assert_eq!(
        rules(&cents, &whole, Mode::Backward),
        [Rule::ConstraintTightened]
    );
    assert_eq!(rules(&cents, &whole, Mode::Forward), []);
    assert_eq!(
        rules(&whole, &cents, Mode::Forward),
        [Rule::ConstraintLoosened]
    );
}

#[test]
fn string_format_added_changed_and_removed() {
    let plain = field(json!({ "type": "string" }));
    let uuid = field(json!({ "type": "string", "format": "uuid" }));
    let email = field(json!({ "type": "string", "format": "email" }));
    assert_eq!(
        text(&plain, &uuid, Mode::Backward),
        [
            "orders.order-placed v1: format `uuid` was added to field `x`: producers still on the old schema may write strings that are not `uuid`, and consumers on the new schema reject them"
        ]
    );
    assert_eq!(rules(&plain, &uuid, Mode::Forward), []);
    assert_eq!(rules(&uuid, &plain, Mode::Backward), []);
    assert!(
        text(&uuid, &plain, Mode::Forward)[0].contains("format `uuid` was removed from field `x`")
    );
    assert!(
        text(&uuid, &email, Mode::Full)
            .iter()
            .all(|t| t.contains("the format of field `x` changed from `uuid` to `email`"))
    );
}

#[test]
fn pattern_and_length() {
    let plain = field(json!({ "type": "string" }));
    let sku = field(json!({ "type": "string", "pattern": "^[a-z]+$", "maxLength": 16 }));
    assert_eq!(
        rules(&plain, &sku, Mode::Backward),
        [Rule::PatternChanged, Rule::RangeNarrowed]
    );
    assert_eq!(rules(&plain, &sku, Mode::Forward), []);
    assert_eq!(
        rules(&sku, &plain, Mode::Forward),
        [Rule::PatternChanged, Rule::RangeWidened]
    );
    assert!(
        text(&plain, &sku, Mode::Backward)[1]
            .contains("the allowed length of field `x` was narrowed from any size to at most 16")
    );
}

#[test]
fn enum_value_added_breaks_forward_and_removed_breaks_backward() {
    let two = field(json!({ "type": "string", "enum": ["card", "invoice"] }));
    let three = field(json!({ "type": "string", "enum": ["card", "invoice", "crypto"] }));
    assert_eq!(rules(&two, &three, Mode::Backward), []);
    assert_eq!(
        text(&two, &three, Mode::Forward),
        [
            "orders.order-placed v1: value `\"crypto\"` of field `x` was added: producers on the new schema may write it, and consumers still on the old schema reject it"
        ]
    );
    assert_eq!(
        text(&three, &two, Mode::Backward),
        [
            "orders.order-placed v1: value `\"crypto\"` of field `x` was removed: producers still on the old schema may write it, and consumers on the new schema reject it"
        ]
    );
    assert_eq!(rules(&three, &two, Mode::Forward), []);
}

#[test]
fn values_restricted_and_unrestricted() {
    let free = field(json!({ "type": "string" }));
    let listed = field(json!({ "type": "string", "enum": ["EUR", "USD"] }));
    assert_eq!(
        rules(&free, &listed, Mode::Backward),
        [Rule::ValuesRestricted]
    );
    assert_eq!(rules(&free, &listed, Mode::Forward), []);
    assert_eq!(
        rules(&listed, &free, Mode::Forward),
        [Rule::ValuesUnrestricted]
    );
    assert_eq!(rules(&listed, &free, Mode::Backward), []);
}

#[test]
fn const_is_a_one_value_enum() {
    let a = field(json!({ "type": "string", "const": "a" }));
    let b = field(json!({ "type": "string", "const": "b" }));
    assert_eq!(
        rules(&a, &b, Mode::Full),
        [Rule::EnumValueRemoved, Rule::EnumValueAdded]
    );
}

#[test]
fn made_nullable_breaks_forward() {
    let string = field(json!({ "type": "string" }));
    let nullable = field(json!({ "type": ["string", "null"] }));
    assert_eq!(rules(&string, &nullable, Mode::Backward), []);
    assert_eq!(
        text(&string, &nullable, Mode::Forward),
        [
            "orders.order-placed v1: field `x` was made nullable: producers on the new schema may write null there, and consumers still on the old schema reject it"
        ]
    );
}

#[test]
fn no_longer_nullable_breaks_backward() {
    let nullable = field(json!({ "type": ["string", "null"] }));
    let string = field(json!({ "type": "string" }));
    assert_eq!(
        text(&nullable, &string, Mode::Backward),
        [
            "orders.order-placed v1: field `x` is no longer nullable: producers still on the old schema may write null there, and consumers on the new schema reject it"
        ]
    );
    assert_eq!(rules(&nullable, &string, Mode::Forward), []);
}

#[test]
fn nullable_references_compare_branch_by_branch() {
    let defs = json!({ "Line": object(json!({ "sku": { "type": "string" } }), &["sku"]) });
    let with = |line: Value| {
        let mut schema = object(json!({ "line": line }), &["line"]);
        schema["$defs"] = defs.clone();
        schema
    };
    let plain = with(json!({ "$ref": "#/$defs/Line" }));
    let nullable = with(json!({ "anyOf": [{ "$ref": "#/$defs/Line" }, { "type": "null" }] }));
    assert_eq!(rules(&plain, &nullable, Mode::Backward), []);
    assert_eq!(rules(&plain, &nullable, Mode::Forward), [Rule::NullAdded]);
    assert_eq!(
        rules(&nullable, &plain, Mode::Backward),
        [Rule::NullRemoved]
    );
    // A nullable scalar against a nullable reference of the same type.
    let scalar = field(json!({ "type": ["string", "null"] }));
    let mut referenced =
        field(json!({ "anyOf": [{ "$ref": "#/$defs/Code" }, { "type": "null" }] }));
    referenced["$defs"] = json!({ "Code": { "type": "string" } });
    assert_eq!(rules(&scalar, &referenced, Mode::Full), []);
}

#[test]
fn nested_objects_are_compared_through_refs() {
    let schema = |line: Value| {
        json!({
            "type": "object",
            "properties": {
                "lines": { "type": "array", "items": { "$ref": "#/$defs/OrderLine" } },
                "first": { "$ref": "#/$defs/OrderLine" },
            },
            "required": ["lines"],
            "$defs": { "OrderLine": line },
        })
    };
    let old = schema(object(
        json!({ "sku": { "type": "string" }, "quantity": { "type": "integer" } }),
        &["sku", "quantity"],
    ));
    let new = schema(object(
        json!({ "sku": { "type": "string" }, "quantity": { "type": "number" }, "discount": { "type": "integer" } }),
        &["sku", "quantity", "discount"],
    ));
    let backward = found(&old, &new, Mode::Backward);
    let fields: Vec<(&str, Rule)> = backward
        .iter()
        .map(|c| (c.field.as_deref().unwrap_or(""), c.rule))
        .collect();
    assert_eq!(
        fields,
        [
            ("first.discount", Rule::RequiredFieldAdded),
            ("lines[].discount", Rule::RequiredFieldAdded),
        ]
    );
    let forward: Vec<String> = text(&old, &new, Mode::Forward);
    assert_eq!(forward.len(), 2, "{forward:?}");
    assert!(forward[0].contains("field `first.quantity` was widened from integer to number"));
    assert!(forward[1].contains("field `lines[].quantity` was widened"));
}

#[test]
fn recursive_types_end() {
    let tree = |kind: &str| {
        json!({
            "$ref": "#/$defs/Node",
            "$defs": { "Node": {
                "type": "object",
                "properties": {
                    "value": { "type": kind },
                    "children": { "type": "array", "items": { "$ref": "#/$defs/Node" } },
                },
                "required": ["value", "children"],
            }},
        })
    };
    assert_eq!(found(&tree("string"), &tree("string"), Mode::Full), []);
    let changed = found(&tree("integer"), &tree("number"), Mode::Forward);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].field.as_deref(), Some("value"));
}

#[test]
fn additional_properties_closed_breaks_backward() {
    let open = object(json!({ "a": { "type": "string" } }), &["a"]);
    let shut = closed(open.clone());
    assert_eq!(
        text(&open, &shut, Mode::Backward),
        [
            "orders.order-placed v1: the event was closed to fields it does not list (`additionalProperties: false`): producers still on the old schema may write fields the schema does not list, and consumers on the new schema reject them"
        ]
    );
    assert_eq!(rules(&open, &shut, Mode::Forward), []);
}

#[test]
fn additional_properties_opened_breaks_forward() {
    let open = object(json!({ "a": { "type": "string" } }), &["a"]);
    let shut = closed(open.clone());
    assert_eq!(rules(&shut, &open, Mode::Backward), []);
    assert_eq!(rules(&shut, &open, Mode::Forward), [Rule::ObjectOpened]);
    // Nested objects name their field.
    let nested = |inner: Value| object(json!({ "meta": inner }), &["meta"]);
    assert!(
        text(&nested(shut), &nested(open), Mode::Forward)[0]
            .contains("`meta` was opened to fields it does not list")
    );
}

#[test]
fn map_values_are_compared() {
    let map = |values: Value| field(json!({ "type": "object", "additionalProperties": values }));
    let integers = map(json!({ "type": "integer" }));
    let strings = map(json!({ "type": "string" }));
    let changes = found(&integers, &strings, Mode::Backward);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].field.as_deref(), Some("x.*"));
    assert_eq!(changes[0].rule, Rule::TypeChanged);
}

#[test]
fn arrays_items_tuples_counts_and_uniqueness() {
    let list = |items: Value| field(json!({ "type": "array", "items": items }));
    assert_eq!(
        rules(
            &list(json!({ "type": "integer" })),
            &list(json!({ "type": "string" })),
            Mode::Backward
        ),
        [Rule::TypeChanged]
    );
    let tuple = |second: &str| {
        field(
            json!({ "type": "array", "prefixItems": [{ "type": "string" }, { "type": second }], "minItems": 2, "maxItems": 2 }),
        )
    };
    let changes = found(&tuple("integer"), &tuple("boolean"), Mode::Backward);
    assert_eq!(changes[0].field.as_deref(), Some("x[1]"));
    let bounded = field(json!({ "type": "array", "maxItems": 3 }));
    let unbounded = field(json!({ "type": "array" }));
    assert_eq!(
        rules(&unbounded, &bounded, Mode::Backward),
        [Rule::RangeNarrowed]
    );
    assert_eq!(
        rules(&bounded, &unbounded, Mode::Forward),
        [Rule::RangeWidened]
    );
    let unique = field(json!({ "type": "array", "uniqueItems": true }));
    assert_eq!(
        rules(&unbounded, &unique, Mode::Backward),
        [Rule::ConstraintTightened]
    );
    assert_eq!(
        rules(&unique, &unbounded, Mode::Forward),
        [Rule::ConstraintLoosened]
    );
}

#[test]
fn tagged_variants_added_and_removed() {
    let variant = |tag: &str| json!({ "type": "object", "properties": { "type": { "type": "string", "const": tag } }, "required": ["type"] });
    let two = field(json!({ "oneOf": [variant("card"), variant("invoice")] }));
    let one = field(json!({ "oneOf": [variant("card")] }));
    assert_eq!(rules(&two, &one, Mode::Backward), [Rule::EnumValueRemoved]);
    assert!(
        text(&two, &one, Mode::Backward)[0]
            .contains("value `\"invoice\"` of field `x.type` was removed")
    );
    assert_eq!(rules(&two, &one, Mode::Forward), []);
    assert_eq!(rules(&one, &two, Mode::Forward), [Rule::EnumValueAdded]);
}

#[test]
fn all_of_is_merged() {
    let old = json!({ "allOf": [
        object(json!({ "a": { "type": "string" } }), &["a"]),
        object(json!({ "b": { "type": "integer" } }), &[]),
    ]});
    let new = object(
        json!({ "a": { "type": "string" }, "b": { "type": "integer" } }),
        &["a", "b"],
    );
    assert_eq!(rules(&old, &new, Mode::Backward), [Rule::FieldMadeRequired]);
    assert_eq!(rules(&old, &new, Mode::Forward), []);
}

#[test]
fn nothing_accepted() {
    assert_eq!(
        rules(
            &field(json!({ "type": "string" })),
            &field(json!(false)),
            Mode::Backward
        ),
        [Rule::NothingAccepted]
    );
    assert_eq!(
        rules(
            &field(json!(false)),
            &field(json!({ "type": "string" })),
            Mode::Backward
        ),
        []
    );
}

#[test]
fn a_dangling_ref_cannot_be_checked() {
    let old = field(json!({ "type": "string" }));
    let new = field(json!({ "$ref": "#/$defs/Missing" }));
    let changes = found(&old, &new, Mode::Backward);
    assert_eq!(changes[0].rule, Rule::Unresolvable);
    assert!(
        changes[0].why.contains("points to nothing"),
        "{}",
        changes[0].why
    );
}

#[test]
fn annotations_never_break() {
    let old = field(json!({ "type": "string", "description": "old words", "x-choreo-note": 1 }));
    let new = field(
        json!({ "type": "string", "description": "new words", "title": "X", "examples": ["a"] }),
    );
    assert_eq!(rules(&old, &new, Mode::Full), []);
}

fn event(name: &str, version: u32, schema: Value) -> EventSchema {
    EventSchema {
        name: name.to_owned(),
        version,
        domain: crate::envelope::domain_of(name).to_owned(),
        routing_key: format!("{name}.v{version}"),
        key: Some("order_id".to_owned()),
        schema,
    }
}

fn set(events: &[(&str, &EventSchema)]) -> SchemaSet {
    let mut set = SchemaSet::new();
    for (service, event) in events {
        set.insert(service, event);
    }
    set
}

#[test]
fn a_removed_version_breaks_both_ways() {
    let schema = object(json!({ "order_id": { "type": "string" } }), &["order_id"]);
    let v1 = event(EVENT, 1, schema.clone());
    let v2 = event(EVENT, 2, schema);
    let old = set(&[("orders", &v1), ("orders", &v2)]);
    let new = set(&[("orders", &v2)]);

    let backward = check(&old, &new, Mode::Backward);
    assert_eq!(backward.compared, 1);
    assert_eq!(backward.breaking.len(), 1);
    assert_eq!(backward.breaking[0].rule, Rule::VersionRemoved);
    assert_eq!(
        backward.breaking[0].to_string(),
        "orders.order-placed v1: this version was removed: consumers on the new contracts no longer read it, yet producers still on the old ones write it and queues may still hold it"
    );
    let forward = check(&old, &new, Mode::Forward);
    assert_eq!(forward.breaking.len(), 1);
    assert!(forward.breaking[0].why.contains("receive nothing more"));
    assert_eq!(check(&old, &new, Mode::Full).breaking.len(), 2);

    // The other way round, a version added is a note.
    let added = check(&new, &old, Mode::Full);
    assert!(added.is_compatible());
    assert_eq!(added.notes, ["orders.order-placed v1: new in this set"]);
}

#[test]
fn services_disagreeing_on_a_schema_is_reported() {
    let a = event(
        EVENT,
        1,
        object(json!({ "order_id": { "type": "string" } }), &["order_id"]),
    );
    let b = event(
        EVENT,
        1,
        object(json!({ "order_id": { "type": "integer" } }), &["order_id"]),
    );
    let documented = event(
        EVENT,
        1,
        object(
            json!({ "order_id": { "type": "string", "description": "the order" } }),
            &["order_id"],
        ),
    );
    let agreeing = set(&[("orders", &a), ("billing", &documented)]);
    assert!(check(&agreeing, &agreeing, Mode::Full).is_compatible());
    let disagreeing = set(&[("orders", &a), ("billing", &b)]);
    let report = check(&agreeing, &disagreeing, Mode::Backward);
    assert_eq!(report.breaking.len(), 1);
    assert_eq!(report.breaking[0].rule, Rule::Inconsistent);
    assert!(
        report.breaking[0]
            .what
            .contains("from `orders` and `billing`")
    );
}

#[test]
fn a_changed_key_is_a_note() {
    let schema = object(json!({ "order_id": { "type": "string" } }), &["order_id"]);
    let old = event(EVENT, 1, schema.clone());
    let mut new = event(EVENT, 1, schema);
    new.key = None;
    let report = check(
        &set(&[("orders", &old)]),
        &set(&[("orders", &new)]),
        Mode::Full,
    );
    assert!(report.is_compatible());
    assert!(report.notes[0].contains("the business key changed from `order_id` to the message id"));
}

#[test]
fn modes_parse_and_print() {
    for mode in [Mode::Backward, Mode::Forward, Mode::Full] {
        assert_eq!(mode.as_str().parse::<Mode>().ok(), Some(mode));
    }
    assert_eq!(Mode::default(), Mode::Backward);
    let error = "sideways".parse::<Mode>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown compatibility mode `sideways`; expected `backward`, `forward` or `full`"
    );
}

/// The rules hold on schemas as schemars writes them for Rust types.
mod rust_types {
    use schemars::JsonSchema;

    use super::*;

    fn schema_of<T: JsonSchema>() -> Value {
        schemars::SchemaGenerator::default()
            .into_root_schema_for::<T>()
            .to_value()
    }

    #[allow(dead_code)]
    #[derive(JsonSchema)]
    struct V1 {
        order_id: String,
        quantity: u32,
        note: String,
    }

    #[allow(dead_code)]
    #[derive(JsonSchema)]
    struct V2 {
        order_id: String,
        quantity: u64,
        note: Option<String>,
        #[serde(default)]
        gift: bool,
    }

    #[allow(dead_code)]
    #[derive(JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        order_id: String,
        quantity: u32,
        note: String,
    }

    #[test]
    fn widening_and_optional_fields_are_backward_compatible() {
        let (v1, v2) = (schema_of::<V1>(), schema_of::<V2>());
        assert_eq!(rules(&v1, &v2, Mode::Backward), []);
        let mut forward = rules(&v1, &v2, Mode::Forward);
        forward.sort();
        assert_eq!(
            forward,
            [Rule::FieldMadeOptional, Rule::NullAdded, Rule::RangeWidened]
        );
    }

    #[test]
    fn deny_unknown_fields_closes_the_event() {
        let (v1, strict) = (schema_of::<V1>(), schema_of::<Strict>());
        assert_eq!(rules(&v1, &strict, Mode::Backward), [Rule::ObjectClosed]);
        assert_eq!(rules(&v1, &strict, Mode::Forward), []);
        assert_eq!(rules(&strict, &v1, Mode::Forward), [Rule::ObjectOpened]);
    }
}
