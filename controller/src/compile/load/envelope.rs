//! The envelope of a document read without its schema: one parse that tells whether the
//! YAML is well-formed, whether the document is a mapping, and what its `kind` and
//! `metadata.name` are. It runs when the typed parse failed (to tell a syntax error
//! from a schema error, and to know the document's kind and name) or could not be
//! chosen (a document without a plain `kind:` line).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What a document is, read without its schema.
#[derive(Debug, Default)]
pub(super) struct Envelope {
    /// False for a scalar or a list.
    pub(super) mapping: bool,
    /// The first `kind`.
    pub(super) kind: Option<Scalar>,
    /// The first `metadata.name`, when it is a string.
    pub(super) name: Option<String>,
}

/// A value read for what it is: a string, or anything else (consumed, not kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Scalar {
    /// A string.
    Str(String),
    /// A number, boolean, null, list or mapping.
    #[default]
    Other,
}

impl Scalar {
    fn into_string(self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s),
            Scalar::Other => None,
        }
    }
}

/// Reads the envelope of a one-document YAML text. `Err` is a syntax error: every other
/// problem (a duplicate key, a wrong type) is the typed parse's to report.
pub(super) fn read(text: &str) -> Result<Envelope, serde_yaml::Error> {
    serde_yaml::Deserializer::from_str(text).deserialize_any(Fields { document: true })
}

/// Reads a node as a [`Scalar`].
struct ScalarVisitor;

/// Reads the envelope fields of a mapping: `kind` and `metadata.name` of the document,
/// or `name` of its `metadata`.
struct Fields {
    document: bool,
}

macro_rules! other {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method<E: de::Error>(self, _: $ty) -> Result<Self::Value, E> {
            Ok(Default::default())
        })*
    };
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    other!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64);

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(value.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The `metadata` mapping, read for its `name`.
struct Metadata(Option<String>);

impl<'de> de::Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
        let envelope = deserializer.deserialize_any(Fields { document: false })?;
        Ok(Metadata(envelope.name))
    }
}

impl<'de> Visitor<'de> for Fields {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    other!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Envelope, E> {
        Ok(Envelope::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Envelope::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope { mapping: true, ..Envelope::default() };
        let top_level = self.document;
        // The first of each key counts: a duplicate is the typed parse's finding.
        while let Some(key) = map.next_key::<Scalar>()? {
            match key.into_string().as_deref() {
                Some("kind") if top_level && envelope.kind.is_none() => {
                    envelope.kind = Some(map.next_value()?)
                }
                Some("metadata") if top_level && envelope.name.is_none() => {
                    envelope.name = map.next_value::<Metadata>()?.0;
                }
                Some("name") if !top_level && envelope.name.is_none() => {
                    envelope.name = map.next_value::<Scalar>()?.into_string();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_can_and_fails_only_on_syntax() {
        let e =
            read("kind: Group\nkind: Device\nmetadata: {name: eu, name: x}\nspec: {a: 1, a: 2}\n").unwrap();
        assert!(e.mapping);
        assert_eq!(e.kind, Some(Scalar::Str("Group".into())));
        assert_eq!(e.name.as_deref(), Some("eu"));
        let e = read("{kind: 5, metadata: {name: a}, 1: 2, [x]: {y: 1, y: 2}}").unwrap();
        assert_eq!(e.kind, Some(Scalar::Other));
        assert_eq!(e.name.as_deref(), Some("a"));
        assert!(!read("- a\n- b\n").unwrap().mapping);
        assert!(!read("just text").unwrap().mapping);
        assert!(read("kind: [\n").is_err());
    }
}
