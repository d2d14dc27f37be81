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

/// Parses a stored event without the keys only federation reads
/// (`auth_events`, `prev_events`, `hashes`, `signatures`, `depth`): those
/// are checked for valid JSON and skipped, not built. Timelines and syncs
/// read events for clients, which never see them, and they are about half
/// of an event's allocations.
pub(super) fn parse_client_object(text: &str) -> Result<CanonicalJsonObject, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let object = de.deserialize_map(ClientObjectVisitor)?;
    de.end()?;
    Ok(object)
}

/// The top-level keys [`parse_client_object`] skips.
pub(super) const FEDERATION_ONLY_KEYS: [&str; 5] = ["auth_events", "prev_events", "hashes", "signatures", "depth"];

struct ClientObjectVisitor;

impl<'de> Visitor<'de> for ClientObjectVisitor {
    type Value = CanonicalJsonObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a stored event (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = CanonicalJsonObject::new();
        while let Some(key) = map.next_key::<String>()? {
            if FEDERATION_ONLY_KEYS.contains(&key.as_str()) {
                map.next_value::<de::IgnoredAny>()?;
            } else {
                let Canonical(value) = map.next_value()?;
                object.insert(key, value);
            }
        }
        Ok(object)
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
            assert!(parse_client_object(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_client_view_is_the_whole_event_less_the_federation_keys() {
        let text = r#"{"auth_events":["$a","$b"],"content":{"body":"hi"},"depth":12,"event_id":"$e",
            "hashes":{"sha256":"x"},"origin_server_ts":1,"prev_events":["$p"],"room_id":"!r:x",
            "sender":"@s:x","signatures":{"x":{"ed25519:k":"sig"}},"type":"m.room.message",
            "unsigned":{"age_ts":1}}"#;
        let mut whole = parse_object(text).unwrap();
        for key in FEDERATION_ONLY_KEYS {
            assert!(whole.remove(key).is_some(), "{key}");
        }
        assert_eq!(parse_client_object(text).unwrap(), whole);
    }
}
