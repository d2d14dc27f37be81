//! Room events in their federation form (PDUs): laid out in the room
//! version's format, content-hashed and signed, given their event ID, and
//! read back as ruma's `state_res::Event` for authorization and state
//! resolution.

use ruma::events::TimelineEventType;
use ruma::room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules};
use ruma::state_res::Event;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, ServerName, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::server_keys::ServerKeysService;
use super::{random_string, ServiceError, ServiceResult};

/// The spec's limit on a whole PDU, signatures included.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A reference to an earlier event: its ID and, for room versions 1 and 2
/// (which carry it in `prev_events` and `auth_events`), its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub event_id: OwnedEventId,
    pub sha256: String,
}

/// What a new event says; the rest of the PDU is derived.
#[derive(Debug, Clone)]
pub struct NewPdu {
    /// `None` only for the create event of a room whose ID comes from it
    /// (room version 12).
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub event_type: TimelineEventType,
    pub content: CanonicalJsonObject,
    pub state_key: Option<String>,
    pub prev_events: Vec<EventRef>,
    pub auth_events: Vec<EventRef>,
    pub depth: u64,
    /// Top-level `redacts`, for the room versions that put it there (before v11).
    pub redacts: Option<OwnedEventId>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

/// `prev_events` or `auth_events` as the room version writes them: IDs, or
/// for versions 1 and 2 `[id, {"sha256": hash}]` pairs.
pub fn references(list: Vec<EventRef>, rules: &RoomVersionRules) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(
        list.into_iter()
            .map(|r| match rules.events_reference_format {
                EventsReferenceFormatVersion::V1 => {
                    let mut hashes = CanonicalJsonObject::new();
                    hashes.insert("sha256".to_owned(), r.sha256.into());
                    CanonicalJsonValue::Array(vec![r.event_id.as_str().into(), hashes.into()])
                }
                _ => r.event_id.as_str().into(),
            })
            .collect(),
    )
}

/// Lays out, hashes and signs `new`; returns its event ID and the PDU as it
/// is stored and sent (with `event_id` inside only for versions 1 and 2).
pub fn build_pdu(
    new: NewPdu,
    rules: &RoomVersionRules,
    server_name: &ServerName,
    keys: &ServerKeysService,
) -> ServiceResult<(OwnedEventId, CanonicalJsonObject)> {
    let refs = |list: Vec<EventRef>| references(list, rules);
    let mut object = CanonicalJsonObject::new();
    if let Some(room_id) = &new.room_id {
        object.insert("room_id".to_owned(), room_id.as_str().into());
    }
    object.insert("sender".to_owned(), new.sender.as_str().into());
    object.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(new.origin_server_ts.0.into()),
    );
    object.insert("type".to_owned(), new.event_type.to_string().into());
    object.insert("content".to_owned(), CanonicalJsonValue::Object(new.content));
    if let Some(state_key) = new.state_key {
        object.insert("state_key".to_owned(), state_key.into());
    }
    object.insert("prev_events".to_owned(), refs(new.prev_events));
    object.insert("auth_events".to_owned(), refs(new.auth_events));
    let depth = UInt::new(new.depth).ok_or_else(|| ServiceError::Internal("depth out of range".to_owned()))?;
    object.insert("depth".to_owned(), CanonicalJsonValue::Integer(depth.into()));
    if let Some(redacts) = new.redacts {
        object.insert("redacts".to_owned(), redacts.as_str().into());
    }
    sign_pdu(object, rules, server_name, keys)
}

/// Hashes and signs a laid-out PDU (one of ours, or a template another
/// server made for our join, leave or knock); returns its event ID and
/// the PDU as it is stored and sent.
pub fn sign_pdu(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    server_name: &ServerName,
    keys: &ServerKeysService,
) -> ServiceResult<(OwnedEventId, CanonicalJsonObject)> {
    object.remove("signatures");
    object.remove("hashes");
    object.remove("unsigned");
    object.remove("event_id");
    // Versions 1 and 2 name events `$opaque:origin`, inside the signed event.
    let v1_event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => {
            let id = EventId::parse(format!("${}:{server_name}", random_string(18)))
                .map_err(|e| ServiceError::Internal(format!("event ID: {e}")))?;
            object.insert("event_id".to_owned(), id.as_str().into());
            Some(id)
        }
        _ => None,
    };
    keys.hash_and_sign_event(&mut object, &rules.redaction)?;
    let event_id = match v1_event_id {
        Some(id) => id,
        None => {
            let hash = ruma::signatures::reference_hash(&object, rules)
                .map_err(|e| ServiceError::TooLarge(format!("event: {e}")))?;
            EventId::parse(format!("${hash}")).map_err(|e| ServiceError::Internal(format!("event ID: {e}")))?
        }
    };
    let size = serde_json::to_vec(&object)
        .map_err(|e| ServiceError::Internal(format!("PDU: {e}")))?
        .len();
    if size > MAX_PDU_BYTES {
        return Err(ServiceError::TooLarge(format!(
            "the event is {size} bytes; the limit is {MAX_PDU_BYTES}"
        )));
    }
    ruma::state_res::check_pdu_format(&object, &rules.event_format)
        .map_err(|e| ServiceError::Internal(format!("built a malformed PDU: {e}")))?;
    Ok((event_id, object))
}

/// A PDU from another server as it is stored here: without the sender's
/// `unsigned` (not signed, so not to be trusted) and with `event_id` only
/// where the room version puts it in the event (versions 1 and 2).
pub fn received_form(
    mut object: CanonicalJsonObject,
    event_id: &EventId,
    rules: &RoomVersionRules,
) -> CanonicalJsonObject {
    object.remove("unsigned");
    object.remove("event_id");
    if rules.event_id_format == EventIdFormatVersion::V1 {
        object.insert("event_id".to_owned(), event_id.as_str().into());
    }
    object
}

/// A stored PDU as other servers get it: without `unsigned` (this server's
/// own additions) and, from room version 3, without `event_id`, which is
/// derived from the event (such IDs have no `:server` part).
pub fn federation_form(mut stored: CanonicalJsonObject, event_id: &EventId) -> CanonicalJsonObject {
    stored.remove("unsigned");
    if !event_id.as_str().contains(':') {
        stored.remove("event_id");
    }
    stored
}

/// A stored PDU, read for authorization and state resolution.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    fields: PduFields,
    pub rejected: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    event_type: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(deserialize_with = "event_ids")]
    prev_events: Vec<OwnedEventId>,
    #[serde(deserialize_with = "event_ids")]
    auth_events: Vec<OwnedEventId>,
    depth: UInt,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    hashes: Option<ContentHashes>,
}

#[derive(Debug, Clone, Deserialize)]
struct ContentHashes {
    sha256: String,
}

/// `["$id", ...]`, or the `[["$id", {hashes}], ...]` of versions 1 and 2.
fn event_ids<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<OwnedEventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reference {
        Id(OwnedEventId),
        WithHashes(OwnedEventId, serde::de::IgnoredAny),
    }
    Ok(Vec::<Reference>::deserialize(deserializer)?
        .into_iter()
        .map(|r| match r {
            Reference::Id(id) | Reference::WithHashes(id, _) => id,
        })
        .collect())
}

impl Pdu {
    /// Reads a PDU; `event_id` is the stored ID (derived from the event for
    /// version 3 and later).
    pub fn from_object(event_id: OwnedEventId, object: &CanonicalJsonObject) -> ServiceResult<Self> {
        let json = serde_json::to_string(object).map_err(|e| ServiceError::BadJson(e.to_string()))?;
        Self::from_json(event_id, &json)
    }

    /// Reads a PDU from its stored JSON text (extra keys such as
    /// `unsigned` are ignored).
    pub fn from_json(event_id: OwnedEventId, json: &str) -> ServiceResult<Self> {
        let fields: PduFields =
            serde_json::from_str(json).map_err(|e| ServiceError::BadJson(format!("not a valid PDU: {e}")))?;
        Ok(Self {
            event_id,
            fields,
            rejected: false,
        })
    }

    pub fn depth(&self) -> UInt {
        self.fields.depth
    }

    /// Whether this is an event of `room_id`: its `room_id` says so, or,
    /// for a room version 12 create event (which has none), the room is
    /// named after it.
    pub fn belongs_to(&self, room_id: &RoomId) -> bool {
        match self.fields.room_id.as_deref() {
            Some(own) => own == room_id,
            None => {
                self.fields.event_type == TimelineEventType::RoomCreate
                    && room_id.as_str().strip_prefix('!') == self.event_id.as_str().strip_prefix('$')
            }
        }
    }

    /// The content hash that references to this event carry (empty if the
    /// PDU has none).
    pub fn content_sha256(&self) -> &str {
        self.fields.hashes.as_ref().map_or("", |h| h.sha256.as_str())
    }
}

impl Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.fields.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.fields.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.fields.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.fields.event_type
    }

    fn content(&self) -> &RawValue {
        &self.fields.content
    }

    fn state_key(&self) -> Option<&str> {
        self.fields.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.fields.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.fields.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.fields.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::open_test_db;
    use ruma::signatures::{verify_event, PublicKeyMap, Verified};
    use ruma::RoomVersionId;

    fn keys(dir: &std::path::Path) -> ServerKeysService {
        ServerKeysService::open(open_test_db(dir), "example.org".try_into().unwrap()).unwrap()
    }

    fn message(room_id: &str, prev: Vec<EventRef>) -> NewPdu {
        let content: CanonicalJsonObject = serde_json::from_str(r#"{"msgtype": "m.text", "body": "hi"}"#).unwrap();
        NewPdu {
            room_id: Some(room_id.try_into().unwrap()),
            sender: "@alice:example.org".try_into().unwrap(),
            event_type: TimelineEventType::RoomMessage,
            content,
            state_key: None,
            auth_events: prev.clone(),
            prev_events: prev,
            depth: 2,
            redacts: None,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(1_700_000_000_000).unwrap()),
        }
    }

    /// Every room version: the PDU verifies with the server's key, its ID
    /// has the version's format, and it reads back as a state-res event.
    #[test]
    fn pdus_of_every_room_version_sign_verify_and_read_back() {
        use RoomVersionId::*;
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let mut key_map = PublicKeyMap::new();
        key_map.insert(
            "example.org".to_owned(),
            [(keys.key_id().to_owned(), keys.public_key())].into(),
        );
        let server: &ServerName = "example.org".try_into().unwrap();
        let earlier = EventRef {
            event_id: "$earlier:example.org".try_into().unwrap(),
            sha256: "abc".to_owned(),
        };

        for version in [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12] {
            let rules = version.rules().unwrap();
            let (event_id, object) = build_pdu(
                message("!room:example.org", vec![earlier.clone()]),
                &rules,
                server,
                &keys,
            )
            .unwrap();
            assert_eq!(
                verify_event(&key_map, &object, &rules).unwrap(),
                Verified::All,
                "{version}"
            );

            let id = event_id.as_str();
            match version {
                V1 | V2 => {
                    assert!(id.ends_with(":example.org"), "{id}");
                    assert_eq!(object["event_id"], CanonicalJsonValue::String(id.to_owned()));
                    assert_eq!(
                        object["prev_events"].to_string(),
                        r#"[["$earlier:example.org",{"sha256":"abc"}]]"#
                    );
                }
                _ => {
                    assert!(!object.contains_key("event_id"), "{version}");
                    assert_eq!(id.len(), 44, "$ + unpadded base64 of 32 bytes: {id}");
                    let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
                    assert_eq!(id, format!("${hash}"));
                    let url_safe = !id.contains('+') && !id.contains('/');
                    if version != V3 {
                        assert!(url_safe, "v4+ IDs are URL-safe: {id}");
                    }
                }
            }

            let pdu = Pdu::from_object(event_id.clone(), &object).unwrap();
            assert_eq!(pdu.event_id(), &event_id);
            assert_eq!(pdu.sender().as_str(), "@alice:example.org");
            assert_eq!(pdu.event_type(), &TimelineEventType::RoomMessage);
            assert_eq!(
                pdu.prev_events().map(|e| e.as_str()).collect::<Vec<_>>(),
                vec!["$earlier:example.org"]
            );
            assert_eq!(pdu.depth(), UInt::new(2).unwrap());
            assert!(pdu.content().get().contains(r#""body":"hi""#));
        }
    }

    /// v12 create events carry no room ID (the room's ID comes from the
    /// event); earlier versions require one.
    #[test]
    fn create_event_room_id_follows_the_room_version() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let server: &ServerName = "example.org".try_into().unwrap();
        let create = |room_id: Option<OwnedRoomId>| NewPdu {
            room_id,
            event_type: TimelineEventType::RoomCreate,
            state_key: Some(String::new()),
            content: serde_json::from_str(r#"{"room_version": "12"}"#).unwrap(),
            depth: 1,
            ..message("!unused:example.org", vec![])
        };
        let v12 = RoomVersionId::V12.rules().unwrap();
        let (event_id, object) = build_pdu(create(None), &v12, server, &keys).unwrap();
        assert!(!object.contains_key("room_id"));
        assert!(Pdu::from_object(event_id, &object).unwrap().room_id().is_none());

        let v11 = RoomVersionId::V11.rules().unwrap();
        assert!(
            build_pdu(create(None), &v11, server, &keys).is_err(),
            "v11 create events need a room ID"
        );
        assert!(build_pdu(create(Some("!r:example.org".try_into().unwrap())), &v11, server, &keys).is_ok());
    }

    #[test]
    fn a_tampered_pdu_no_longer_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path());
        let rules = RoomVersionId::V11.rules().unwrap();
        let server: &ServerName = "example.org".try_into().unwrap();
        let (_, mut object) = build_pdu(message("!room:example.org", vec![]), &rules, server, &keys).unwrap();
        let mut key_map = PublicKeyMap::new();
        key_map.insert(
            "example.org".to_owned(),
            [(keys.key_id().to_owned(), keys.public_key())].into(),
        );
        object.insert("sender".to_owned(), "@mallory:example.org".into());
        assert!(verify_event(&key_map, &object, &rules).is_err());
    }
}
