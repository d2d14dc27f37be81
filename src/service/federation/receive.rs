//! What other servers send us: X-Matrix request authentication, PDU
//! signature and content-hash checks, and transactions of PDUs (with the
//! history they lack fetched from the sender) and EDUs.

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::federation::authentication::XMatrix;
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::event::{get_event, get_missing_events, get_room_state_ids};
use ruma::api::federation::transactions::edu::Edu;
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Raw;
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, ServerName,
};
use serde_json::value::RawValue;

use super::keys::{key_validity_for, valid_now};
use super::FederationService;
use crate::service::outbox::Destination;
use crate::service::pdu::MAX_PDU_BYTES;
use crate::service::timeline::Received;
use crate::service::{ServiceError, ServiceResult, Services};

/// Events fetched for one incoming PDU at most (missing events, or the
/// state and auth chain when its history cannot be filled in).
const MAX_FETCHED_EVENTS: usize = 5000;
/// Missing events asked for in one go.
const MISSING_EVENTS_LIMIT: u32 = 20;
/// How long a remote user's typing notice lasts without renewal.
const REMOTE_TYPING: std::time::Duration = std::time::Duration::from_secs(30);

impl FederationService {
    /// Checks the X-Matrix signature of an incoming request; returns the
    /// server that sent it. A request that reaches us means its server is
    /// up: what waits for it goes out now.
    pub async fn authenticate(&self, request: &http::Request<Vec<u8>>) -> ServiceResult<ruma::OwnedServerName> {
        let refused = |why: String| ServiceError::Unauthorized(why);
        let xmatrix = XMatrix::extract_from_http_headers(request.headers())
            .map_err(|e| refused(format!("no valid X-Matrix authorization: {e}")))?;
        if xmatrix.destination.as_ref().is_some_and(|d| d != &self.server_name) {
            return Err(refused("the request is meant for another server".to_owned()));
        }
        if xmatrix.origin == self.server_name {
            return Err(refused("the request claims to come from this server".to_owned()));
        }
        let key_id = xmatrix.key.to_string();
        let keys = self
            .keys
            .keys_for(
                &self.client,
                &xmatrix.origin,
                std::slice::from_ref(&key_id),
                valid_now(),
            )
            .await?;
        if keys.is_empty() {
            return Err(refused(format!(
                "the key {key_id} of {} could not be found",
                xmatrix.origin
            )));
        }
        let mut map = PublicKeyMap::new();
        map.insert(xmatrix.origin.to_string(), keys);
        xmatrix
            .verify_http_request(request, &self.server_name, &map)
            .map_err(|e| refused(format!("the request's signature does not verify: {e}")))?;
        self.client.reset(&xmatrix.origin);
        self.outbox.retry_now(&Destination::Server(xmatrix.origin.clone()));
        Ok(xmatrix.origin)
    }

    /// Reads a PDU of a room of `version` and checks its format, size and
    /// signatures; a PDU whose content does not match its hash is redacted
    /// (the spec's rule), one whose signatures fail is refused.
    pub async fn verify_pdu(
        &self,
        version: &RoomVersionId,
        raw: &RawValue,
    ) -> ServiceResult<(OwnedEventId, CanonicalJsonObject)> {
        let rules = rules_of(version)?;
        if raw.get().len() > MAX_PDU_BYTES {
            return Err(ServiceError::TooLarge(format!("a PDU may have {MAX_PDU_BYTES} bytes")));
        }
        let mut object: CanonicalJsonObject =
            serde_json::from_str(raw.get()).map_err(|e| ServiceError::BadJson(format!("not a PDU: {e}")))?;
        object.remove("unsigned");
        let event_id = event_id_of(&object, &rules)?;
        ruma::state_res::check_pdu_format(&object, &rules.event_format)
            .map_err(|e| ServiceError::BadJson(format!("{event_id} is malformed: {e}")))?;
        let valid_at = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => {
                key_validity_for(&rules, u64::try_from(i64::from(*ts)).unwrap_or(0))
            }
            _ => 0,
        };
        let mut map = PublicKeyMap::new();
        if let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") {
            for (server, keys) in signatures {
                let (Ok(server), CanonicalJsonValue::Object(keys)) = (ServerName::parse(server), keys) else {
                    continue;
                };
                let key_ids: Vec<String> = keys.keys().cloned().collect();
                let found = self.keys.keys_for(&self.client, &server, &key_ids, valid_at).await?;
                map.insert(server.to_string(), found);
            }
        }
        // The signature checks, off the async workers (see `work`).
        self.work
            .run(move || {
                match ruma::signatures::verify_event(&map, &object, &rules) {
                    Ok(Verified::All) => {}
                    Ok(Verified::Signatures) => {
                        tracing::info!(%event_id, "content hash mismatch: the event is kept redacted");
                        object = ruma::canonical_json::redact(object, &rules.redaction, None)
                            .map_err(|e| ServiceError::BadJson(format!("{event_id} cannot be redacted: {e}")))?;
                    }
                    Err(e) => {
                        return Err(ServiceError::Forbidden(format!(
                            "{event_id}: signatures do not verify: {e}"
                        )));
                    }
                }
                Ok((event_id, object))
            })
            .await?
    }

    /// `PUT /send/{txnId}`: each PDU authorized and stored (a room's
    /// events in order, rooms side by side), each EDU applied.
    pub async fn receive_transaction(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        pdus: &[Box<RawValue>],
        edus: &[Raw<Edu>],
    ) -> BTreeMap<OwnedEventId, Result<(), String>> {
        // Each room's PDUs, in the order sent.
        let mut rooms: Vec<(OwnedRoomId, Vec<&RawValue>)> = Vec::new();
        for raw in pdus {
            let Some(room_id) = room_id_of(raw) else {
                tracing::info!(%origin, "a PDU without a room ID ignored");
                continue;
            };
            match rooms.iter_mut().find(|(id, _)| *id == room_id) {
                Some((_, list)) => list.push(raw),
                None => rooms.push((room_id, vec![raw])),
            }
        }
        let per_room = rooms
            .into_iter()
            .map(|(room_id, raws)| self.receive_room_pdus(s, origin, room_id, raws));
        let mut results = BTreeMap::new();
        for room_results in futures_util::future::join_all(per_room).await {
            results.extend(room_results);
        }
        for edu in edus {
            let Ok(edu) = edu.deserialize() else { continue };
            if let Err(e) = self.receive_edu(s, origin, edu).await {
                tracing::debug!(%origin, error = %e, "EDU ignored");
            }
        }
        results
    }

    /// One room's PDUs of a transaction, one after the other.
    async fn receive_room_pdus(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: OwnedRoomId,
        raws: Vec<&RawValue>,
    ) -> BTreeMap<OwnedEventId, Result<(), String>> {
        let mut results = BTreeMap::new();
        // A server the room's ACL denies takes no part in it.
        if !s.timeline.server_allowed(s, &room_id, origin).unwrap_or(false) {
            tracing::info!(%origin, %room_id, "PDUs from a server the room's ACL denies");
            return results;
        }
        let version = match s.timeline.room(&room_id) {
            Ok(Some(record)) => match RoomVersionId::try_from(record.version.as_str()) {
                Ok(version) => version,
                Err(_) => return results,
            },
            // Events of rooms this server is not in are not ours to take.
            _ => return results,
        };
        for raw in raws {
            let (event_id, object) = match self.verify_pdu(&version, raw).await {
                Ok(verified) => verified,
                Err(e) => {
                    tracing::info!(%origin, %room_id, error = %e, "PDU refused");
                    if let Ok(id) = rules_of(&version).and_then(|rules| {
                        serde_json::from_str(raw.get())
                            .map_err(|e| ServiceError::BadJson(e.to_string()))
                            .and_then(|o: CanonicalJsonObject| event_id_of(&o, &rules))
                    }) {
                        results.insert(id, Err(e.to_string()));
                    }
                    continue;
                }
            };
            let outcome = self
                .handle_pdu(s, origin, &room_id, &version, event_id.clone(), object)
                .await;
            results.insert(event_id, outcome.map_err(|e| e.to_string()));
        }
        results
    }

    /// One PDU into its room: what it lacks fetched from `origin` first.
    pub async fn handle_pdu(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: OwnedEventId,
        object: CanonicalJsonObject,
    ) -> ServiceResult<()> {
        let outcome = self
            .handle_arrival(s, origin, room_id, version, (event_id.clone(), object), Arrival::Live)
            .await?;
        match outcome {
            Received::Accepted { .. } | Received::AlreadyKnown | Received::SoftFailed => Ok(()),
            Received::Rejected(reason) => Err(ServiceError::Forbidden(reason)),
            Received::Missing { auth, prev } => Err(ServiceError::BadRequest(format!(
                "{event_id} references events that could not be fetched ({} auth, {} prev)",
                auth.len(),
                prev.len()
            ))),
        }
    }

    /// A PDU into its room as news or as history, with what it lacks
    /// fetched from `origin` first: its auth chain; for news, the events
    /// between it and the room's end (history has no such gap to fill);
    /// failing those, the state before it.
    pub(super) async fn handle_arrival(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        (event_id, object): (OwnedEventId, CanonicalJsonObject),
        arrival: Arrival,
    ) -> ServiceResult<Received> {
        let mut fetched = 0usize;
        let mut outcome = self.receive(s, room_id, &event_id, &object, None, arrival).await?;
        if let Received::Missing { auth, prev } = &outcome {
            if !auth.is_empty() {
                self.fetch_auth_chain(s, origin, room_id, version, &event_id, &mut fetched)
                    .await?;
            }
            if !prev.is_empty() && arrival == Arrival::Live {
                self.fetch_missing(s, origin, room_id, version, &event_id, &object, &mut fetched)
                    .await?;
            }
            outcome = self.receive(s, room_id, &event_id, &object, None, arrival).await?;
        }
        if let Received::Missing { .. } = outcome {
            // The gap is too wide to fill (or, for history, lies before
            // what is stored here): take the state before the event from
            // the server that sent it.
            let state = self
                .fetch_state_before(s, origin, room_id, version, &event_id, &mut fetched)
                .await?;
            outcome = self
                .receive(s, room_id, &event_id, &object, Some(state), arrival)
                .await?;
        }
        Ok(outcome)
    }

    /// Fills a gap before `event_id` with `get_missing_events`, oldest first.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_missing(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &EventId,
        object: &CanonicalJsonObject,
        fetched: &mut usize,
    ) -> ServiceResult<()> {
        let record = s.timeline.room_or_404(room_id)?;
        let earliest: Vec<OwnedEventId> = record
            .forward_extremities
            .iter()
            .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
            .collect();
        let min_depth = match object.get("depth") {
            Some(CanonicalJsonValue::Integer(depth)) => {
                i64::from(*depth).saturating_sub(MISSING_EVENTS_LIMIT.into()).max(0)
            }
            _ => 0,
        };
        let mut request = get_missing_events::v1::Request::new(room_id.to_owned(), earliest, vec![event_id.to_owned()]);
        request.limit = MISSING_EVENTS_LIMIT.into();
        request.min_depth = ruma::UInt::try_from(min_depth).unwrap_or_default();
        let response = self.client.send(origin, request).await?;
        let events = self
            .verified_oldest_first(origin, version, within_budget(&response.events, fetched))
            .await;
        for (id, object) in events {
            // Each in turn; one that still lacks history waits for later.
            self.receive(s, room_id, &id, &object, None, Arrival::Live).await?;
        }
        Ok(())
    }

    /// The PDUs of `raw` that verify (the others are dropped and logged),
    /// oldest first: by depth, which a child always exceeds its parents in.
    pub(super) async fn verified_oldest_first(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        raw: &[Box<RawValue>],
    ) -> Vec<(OwnedEventId, CanonicalJsonObject)> {
        let mut events = Vec::new();
        for raw in raw {
            match self.verify_pdu(version, raw).await {
                Ok((id, object)) => {
                    let depth = match object.get("depth") {
                        Some(CanonicalJsonValue::Integer(d)) => i64::from(*d),
                        _ => 0,
                    };
                    events.push((depth, id, object));
                }
                Err(e) => tracing::info!(%origin, error = %e, "fetched event refused"),
            }
        }
        events.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        events.into_iter().map(|(_, id, object)| (id, object)).collect()
    }

    /// Fetches the auth chain of `event_id` from `origin` and keeps what
    /// was missing as outliers.
    async fn fetch_auth_chain(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &EventId,
        fetched: &mut usize,
    ) -> ServiceResult<()> {
        let request = get_event_authorization::v1::Request::new(room_id.to_owned(), event_id.to_owned());
        let response = self.client.send(origin, request).await?;
        let events = self
            .verified_oldest_first(origin, version, within_budget(&response.auth_chain, fetched))
            .await;
        self.store_outliers(s, room_id, version, events).await?;
        Ok(())
    }

    /// The state before `event_id` as `origin` has it: the IDs, with every
    /// event of it and of its auth chain not known here fetched and kept
    /// as outliers.
    async fn fetch_state_before(
        &self,
        s: &Arc<Services>,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &EventId,
        fetched: &mut usize,
    ) -> ServiceResult<Vec<OwnedEventId>> {
        let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let response = self.client.send(origin, request).await?;
        let mut events = Vec::new();
        for id in response.auth_chain_ids.iter().chain(&response.pdu_ids) {
            if s.timeline.pdu(id)?.is_some() {
                continue;
            }
            if *fetched >= MAX_FETCHED_EVENTS {
                return Err(ServiceError::RemoteFailed(format!(
                    "the state of {room_id} at {event_id} is larger than this server fetches"
                )));
            }
            *fetched += 1;
            let event = self
                .client
                .send(origin, get_event::v1::Request::new(id.clone()))
                .await?;
            let (got, object) = self.verify_pdu(version, &event.pdu).await?;
            if &got != id {
                return Err(ServiceError::RemoteFailed(format!(
                    "asked {origin} for {id}, got {got}"
                )));
            }
            events.push((got, object));
        }
        let rejected = self.store_outliers(s, room_id, version, events).await?;
        // What the auth rules refuse is no part of the state.
        let mut state = response.pdu_ids;
        state.retain(|id| !rejected.contains(id));
        Ok(state)
    }

    async fn receive_edu(&self, s: &Arc<Services>, origin: &ServerName, edu: Edu) -> ServiceResult<()> {
        match edu {
            Edu::Typing(typing) => {
                if typing.user_id.server_name() != origin || !s.timeline.server_allowed(s, &typing.room_id, origin)? {
                    return Err(ServiceError::Forbidden("typing of another server's user".to_owned()));
                }
                let timeout = typing.typing.then_some(REMOTE_TYPING);
                s.run(move |s| s.typing.set(s, &typing.user_id, &typing.room_id, timeout))
                    .await
            }
            Edu::Receipt(receipts) => {
                for (room_id, map) in receipts.receipts {
                    if !s.timeline.server_allowed(s, &room_id, origin)? {
                        continue;
                    }
                    for (user_id, data) in map.read {
                        if user_id.server_name() != origin {
                            continue;
                        }
                        let thread = match &data.data.thread {
                            ruma::events::receipt::ReceiptThread::Main => Some("main".to_owned()),
                            ruma::events::receipt::ReceiptThread::Thread(root) => Some(root.to_string()),
                            _ => None,
                        };
                        for event_id in data.event_ids {
                            let (room_id, user_id, thread) = (room_id.clone(), user_id.clone(), thread.clone());
                            let set = s
                                .run(move |s| {
                                    s.receipts
                                        .set(s, &user_id, &room_id, "m.read", &event_id, thread.as_deref())
                                })
                                .await;
                            if let Err(e) = set {
                                tracing::debug!(%origin, error = %e, "receipt ignored");
                            }
                        }
                    }
                }
                Ok(())
            }
            Edu::DirectToDevice(content) => self.receive_to_device(s, origin, content).await,
            Edu::DeviceListUpdate(update) => self.receive_device_list_update(s, origin, update).await,
            Edu::SigningKeyUpdate(update) => self.receive_signing_key_update(s, origin, update).await,
            Edu::Presence(content) => {
                for update in content.push {
                    let user = update.user_id;
                    if user.server_name() != origin {
                        continue;
                    }
                    let (presence, status_msg) = (update.presence.as_str().to_owned(), update.status_msg);
                    let last_active_ago = u64::from(update.last_active_ago);
                    let applied = s
                        .run(move |s| {
                            // Only the presence of someone who shares a room
                            // with us is anybody's business here.
                            let shares_a_room = s
                                .timeline
                                .user_rooms(&user)?
                                .iter()
                                .any(|(_, record)| record.membership == "join");
                            if !shares_a_room {
                                return Ok(());
                            }
                            s.presence
                                .receive_remote(s, &user, &presence, status_msg, last_active_ago)
                        })
                        .await;
                    if let Err(e) = applied {
                        tracing::debug!(%origin, error = %e, "presence update ignored");
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// How an event from another server reaches us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Sent as it happened (a transaction, a join, missing events).
    Live,
    /// Fetched from the room's past, for this backfilled position.
    Backfilled(u64),
}

impl FederationService {
    /// Authorizes and stores an event of another server, in the federation
    /// pool.
    async fn receive(
        &self,
        s: &Arc<Services>,
        room_id: &RoomId,
        event_id: &EventId,
        object: &CanonicalJsonObject,
        state: Option<Vec<OwnedEventId>>,
        arrival: Arrival,
    ) -> ServiceResult<Received> {
        let (room_id, event_id, object) = (room_id.to_owned(), event_id.to_owned(), object.clone());
        self.work
            .run_on(s, move |s| match arrival {
                Arrival::Live => s
                    .timeline
                    .receive_remote(s, &room_id, event_id, object, state.as_deref()),
                Arrival::Backfilled(position) => {
                    s.timeline
                        .receive_backfilled(s, &room_id, event_id, object, state.as_deref(), position)
                }
            })
            .await
    }

    /// Keeps fetched events as outliers, checked against their own auth
    /// events; returns the IDs of those refused.
    async fn store_outliers(
        &self,
        s: &Arc<Services>,
        room_id: &RoomId,
        version: &RoomVersionId,
        events: Vec<(OwnedEventId, CanonicalJsonObject)>,
    ) -> ServiceResult<Vec<OwnedEventId>> {
        let (room_id, rules) = (room_id.to_owned(), rules_of(version)?);
        self.work
            .run_on(s, move |s| s.timeline.store_outliers(&room_id, &rules, events))
            .await
    }
}

/// As many of `events` as the fetch budget of one incoming PDU still
/// allows (see `MAX_FETCHED_EVENTS`), counted as fetched.
fn within_budget<'a>(events: &'a [Box<RawValue>], fetched: &mut usize) -> &'a [Box<RawValue>] {
    let take = events.len().min(MAX_FETCHED_EVENTS.saturating_sub(*fetched));
    *fetched += take;
    &events[..take]
}

pub(super) fn rules_of(version: &RoomVersionId) -> ServiceResult<RoomVersionRules> {
    version
        .rules()
        .ok_or_else(|| ServiceError::UnsupportedRoomVersion(format!("room version {version} is not supported")))
}

/// The event ID: inside the event for room versions 1 and 2, its
/// reference hash after.
pub(super) fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> ServiceResult<OwnedEventId> {
    match rules.event_id_format {
        ruma::room_version_rules::EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                OwnedEventId::try_from(id.as_str()).map_err(|e| ServiceError::BadJson(format!("event_id: {e}")))
            }
            _ => Err(ServiceError::BadJson("the PDU has no event_id".to_owned())),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(object, rules)
                .map_err(|e| ServiceError::BadJson(format!("the PDU cannot be hashed: {e}")))?;
            OwnedEventId::try_from(format!("${hash}")).map_err(|e| ServiceError::BadJson(format!("event ID: {e}")))
        }
    }
}

fn room_id_of(raw: &RawValue) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: OwnedRoomId,
    }
    serde_json::from_str::<RoomOnly>(raw.get()).ok().map(|r| r.room_id)
}
