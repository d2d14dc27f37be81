//! Parsing stored events straight into canonical JSON. ruma's own
//! `Deserialize` for `CanonicalJsonValue` builds a `serde_json::Value` first
//! and converts it, two trees for every event read; reading timelines and
//! syncs parse thousands of events, so this visitor builds the one tree.

use std::fmt;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, Int};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses stored JSON text as a canonical JSON object.
pub(super) fn parse_object(text: &str) -> Result<CanonicalJsonObject, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de.deserialize_any(CanonicalVisitor)?;
    de.end()?;
    match value {
        CanonicalJsonValue::Object(object) => Ok(object),
        _ => Err(de::Error::custom("a stored event is not a JSON object")),
    }
}

struct Canonical(CanonicalJsonValue);

impl<'de> de::Deserialize<'de> for Canonical {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CanonicalVisitor).map(Canonical)
    }
}

struct CanonicalVisitor;

impl<'de> Visitor<'de> for CanonicalVisitor {
    type Value = CanonicalJsonValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("canonical JSON (no floats, integers within ±(2^53 - 1))")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Int::new(v)
            .map(CanonicalJsonValue::Integer)
            .ok_or_else(|| E::custom("integer out of canonical JSON's range"))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .ok()
            .and_then(Int::new)
            .map(CanonicalJsonValue::Integer)
            .ok_or_else(|| E::custom("integer out of canonical JSON's range"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom("floats are not canonical JSON"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(CanonicalJsonValue::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Canonical(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(CanonicalJsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = CanonicalJsonObject::new();
        while let Some((key, Canonical(value))) = map.next_entry::<String, Canonical>()? {
            object.insert(key, value);
        }
        Ok(CanonicalJsonValue::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_ruma_and_refuses_what_canonical_json_refuses() {
        let text = r#"{"type":"m.room.message","content":{"body":"hi \u00e9","n":[1,-2,true,null,{"a":{}}]},"depth":9007199254740991}"#;
        let ours = parse_object(text).unwrap();
        let ruma: CanonicalJsonObject = serde_json::from_str(text).unwrap();
        assert_eq!(ours, ruma);
        for bad in [r#"{"a":1.5}"#, r#"{"a":9007199254740992}"#, r#"[1]"#, r#"{"a":1} x"#] {
            assert!(parse_object(bad).is_err(), "{bad} was accepted");
        }
    }
}
