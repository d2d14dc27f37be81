//! What our clients read of other servers: their room directories
//! (`/publicRooms?server=`), the spaces this server is not in (`/hierarchy`)
//! and, when this server lacks a room's older events, the event nearest a
//! time (`/timestamp_to_event`).

use std::sync::Arc;
use std::time::Duration;

use ruma::api::federation::directory::get_public_rooms_filtered;
use ruma::api::federation::event::{get_event, get_event_by_timestamp};
use ruma::api::federation::space::get_hierarchy;
use ruma::api::Direction;
use ruma::directory::{RoomNetwork, RoomTypeFilter};
use ruma::{CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId};
use ruma::{RoomId, RoomVersionId, ServerName, UInt};

use super::FederationService;
use crate::service::rooms::{DirectoryPage, DirectoryQuery, HierarchyPage, HierarchyQuery, RemoteRooms};
use crate::service::{ServiceError, ServiceResult, Services};

/// Requests to other servers one client `/hierarchy` request makes at most.
const MAX_HIERARCHY_REQUESTS: usize = 10;
/// Servers of a child's `via` (or of a room's members) tried at most.
const MAX_SERVERS_TRIED: usize = 3;
/// A client waits on these answers: a server slower than this is skipped.
const REMOTE_READ_TIMEOUT: Duration = Duration::from_secs(10);

impl FederationService {
    /// A page of the room directory: ours, or with `server` naming another
    /// server, that server's.
    pub async fn public_rooms(
        &self,
        services: &Arc<Services>,
        server: Option<OwnedServerName>,
        query: DirectoryQuery,
    ) -> ServiceResult<DirectoryPage> {
        let Some(server) = server.filter(|server| *server != services.config.server_name) else {
            return services.run(move |s| s.rooms.directory_page(s, &query)).await;
        };
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.limit = query.limit.and_then(|l| UInt::new(l as u64));
        request.since = query.since;
        request.filter.generic_search_term = query.search;
        request.filter.room_types = query.room_types.into_iter().map(RoomTypeFilter::from).collect();
        request.room_network = match query.third_party_network {
            Some(network) => RoomNetwork::ThirdParty(network),
            None if query.all_networks => RoomNetwork::All,
            None => RoomNetwork::Matrix,
        };
        let answer = self.client.send(&server, request).await?;
        Ok(DirectoryPage {
            // An entry that does not serialize (an unknown join rule) is left out.
            chunk: answer
                .chunk
                .iter()
                .filter_map(|room| serde_json::to_value(room).ok())
                .collect(),
            next_batch: answer.next_batch,
            prev_batch: answer.prev_batch,
            total: answer.total_room_count_estimate.map(u64::from),
        })
    }

    /// A page of the space hierarchy under `root` for `user`. Rooms this
    /// server is not in are asked for from the servers their parent's
    /// `m.space.child` event names, a bounded number of requests in all;
    /// each answer may name more such rooms, so the walk runs again after
    /// each round of answers.
    pub async fn hierarchy(
        &self,
        services: &Arc<Services>,
        user: OwnedUserId,
        root: OwnedRoomId,
        query: HierarchyQuery,
    ) -> ServiceResult<HierarchyPage> {
        let own = services.config.server_name.clone();
        let mut remote = RemoteRooms::default();
        let mut requests = 0;
        loop {
            let (user, root, walk_query) = (user.clone(), root.clone(), query.clone());
            let (walk, returned) = services
                .run(move |s| {
                    let walk = s.rooms.hierarchy(s, &user, &root, &walk_query, &remote)?;
                    Ok((walk, remote))
                })
                .await?;
            remote = returned;
            if walk.unknown.is_empty() || requests >= MAX_HIERARCHY_REQUESTS || !services.config.allow_federation {
                return Ok(walk.page);
            }
            // Every room asked about is marked, so each round asks about
            // new rooms only and the rounds end.
            for (room_id, via) in walk.unknown {
                remote.mark_asked(&room_id);
                for server in via.iter().filter(|server| **server != own).take(MAX_SERVERS_TRIED) {
                    if requests >= MAX_HIERARCHY_REQUESTS {
                        break;
                    }
                    requests += 1;
                    if self
                        .learn_space(&mut remote, server, &room_id, query.suggested_only)
                        .await
                    {
                        break;
                    }
                }
            }
        }
    }

    /// Asks `server` for the space `room_id` and its children; whether it
    /// answered.
    async fn learn_space(
        &self,
        remote: &mut RemoteRooms,
        server: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> bool {
        let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
        request.suggested_only = suggested_only;
        let answer = match self
            .client
            .send_with_timeout(server, request, REMOTE_READ_TIMEOUT)
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%server, %room_id, %error, "space hierarchy not fetched");
                return false;
            }
        };
        if answer.room.summary.room_id != room_id {
            tracing::debug!(%server, %room_id, "space hierarchy answer is about another room");
            return false;
        }
        let Ok(room) = serde_json::to_value(&answer.room) else {
            return false;
        };
        let children = answer
            .children
            .iter()
            .filter_map(|child| serde_json::to_value(child).ok())
            .collect();
        remote.learn(room, children, answer.inaccessible_children);
        true
    }

    /// The event closest to `ts` that `user` may see (see
    /// `TimelineService::event_at_time`). When this server has none there
    /// (it may have joined after that time), another server in the room
    /// is asked, and the event it names is fetched and checked.
    pub async fn event_at_time(
        &self,
        services: &Arc<Services>,
        user: OwnedUserId,
        room_id: OwnedRoomId,
        ts: u64,
        forward: bool,
    ) -> ServiceResult<(OwnedEventId, u64)> {
        let local = {
            let room_id = room_id.clone();
            services
                .run(move |s| s.timeline.event_at_time(s, &user, &room_id, ts, forward))
                .await
        };
        let not_found = match local {
            Err(ServiceError::NotFound(message)) if services.config.allow_federation => message,
            other => return other,
        };
        let own = services.config.server_name.clone();
        let id = room_id.clone();
        let servers_and_version = services
            .run(move |s| {
                let Some(record) = s.timeline.room(&id)? else {
                    return Ok(None);
                };
                let servers: Vec<OwnedServerName> = s.timeline.servers_in_room(&id)?.into_iter().collect();
                Ok(Some((servers, record.version)))
            })
            .await?;
        let Some((servers, version)) = servers_and_version else {
            return Err(ServiceError::NotFound(not_found));
        };
        let version = RoomVersionId::try_from(version.as_str())
            .map_err(|e| ServiceError::Internal(format!("stored room version: {e}")))?;
        for server in servers.iter().filter(|server| **server != own).take(MAX_SERVERS_TRIED) {
            match self.remote_event_at_time(server, &room_id, &version, ts, forward).await {
                Ok(found) => return Ok(found),
                Err(error) => tracing::debug!(%server, %room_id, %error, "no event by time from this server"),
            }
        }
        Err(ServiceError::NotFound(not_found))
    }

    /// `server`'s answer to `timestamp_to_event`, once the event it names
    /// is fetched from it, signed, of this room and on the right side of
    /// `ts`.
    async fn remote_event_at_time(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        ts: u64,
        forward: bool,
    ) -> ServiceResult<(OwnedEventId, u64)> {
        let at = MilliSecondsSinceUnixEpoch(UInt::new_saturating(ts));
        let dir = if forward {
            Direction::Forward
        } else {
            Direction::Backward
        };
        let request = get_event_by_timestamp::v1::Request::new(room_id.to_owned(), at, dir);
        let answer = self
            .client
            .send_with_timeout(server, request, REMOTE_READ_TIMEOUT)
            .await?;
        let request = get_event::v1::Request::new(answer.event_id.clone());
        let event = self
            .client
            .send_with_timeout(server, request, REMOTE_READ_TIMEOUT)
            .await?;
        let (event_id, object) = self.verify_pdu(version, &event.pdu).await?;
        let event_ts = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(t)) => u64::try_from(i64::from(*t)).ok(),
            _ => None,
        };
        let in_room = match object.get("room_id") {
            Some(CanonicalJsonValue::String(id)) => id == room_id.as_str(),
            // A version 12 create event is named after the room.
            _ => crate::service::timeline::room_id_of_v12_create(&event_id).is_ok_and(|id| id == room_id),
        };
        let on_our_side = event_ts.is_some_and(|t| if forward { t >= ts } else { t <= ts });
        match event_ts {
            Some(event_ts) if event_id == answer.event_id && in_room && on_our_side => Ok((event_id, event_ts)),
            _ => Err(ServiceError::RemoteFailed(format!(
                "{server} named {} for this time, which is not an event of this room then",
                answer.event_id
            ))),
        }
    }
}
