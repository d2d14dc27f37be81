//! The room's past from other servers. A room joined over federation
//! starts here at the join; when a client reads back past the oldest event
//! stored, the events before it are asked of the room's other servers
//! (`/backfill`), checked like any other PDU, and stored at backfilled
//! positions, before everything clients have seen (see
//! `database::rooms::position`).

use std::sync::Arc;

use ruma::api::federation::backfill::get_backfill;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId};

use super::receive::Arrival;
use super::FederationService;
use crate::database::rooms::position;
use crate::service::timeline::{Page, Pagination, Received};
use crate::service::{ServiceError, ServiceResult, Services};

/// Events asked for in one request (a page of `/messages` at most).
const BACKFILL_LIMIT: u32 = 100;
/// Servers asked before giving up, for one request.
const SERVERS_TRIED: usize = 3;

impl FederationService {
    /// A page of a room's history for `user` (`/messages`). Reading back
    /// past the oldest event stored here fetches the events before it
    /// first, so that a member who joined late sees what came before.
    pub async fn messages(
        &self,
        s: &Arc<Services>,
        user: OwnedUserId,
        device: String,
        room_id: OwnedRoomId,
        pagination: Pagination,
    ) -> ServiceResult<Page> {
        let read = |pagination: Pagination| {
            let (user, device, room_id) = (user.clone(), device.clone(), room_id.clone());
            s.run(move |s| s.timeline.messages(s, &user, &device, &room_id, pagination))
        };
        let mut page = read(pagination.clone()).await?;
        if page.at_start.is_none() {
            return Ok(page);
        }
        let wanted = pagination.limit.saturating_sub(page.chunk.len());
        if wanted > 0 {
            let limit = u32::try_from(wanted).unwrap_or(BACKFILL_LIMIT);
            match self.backfill(s, &room_id, limit).await {
                Ok(0) => {}
                Ok(_) => page = read(pagination).await?,
                Err(e) => tracing::info!(%room_id, error = %e, "backfill failed"),
            }
        }
        // A full page that ends where the stored history does: the client
        // may read on, and the next page fetches more. (An empty page ends
        // the reading: nothing more could be fetched now.)
        if page.at_start.is_some() && !page.chunk.is_empty() {
            let room = room_id.clone();
            let more = s.run(move |s| s.timeline.backfill_point(&room)).await?;
            if !more.missing.is_empty() {
                page.end = page.at_start.take();
            }
        }
        Ok(page)
    }

    /// Fetches up to `limit` events from before the oldest event stored of
    /// `room_id` from one of the room's other servers; returns how many
    /// were stored (0 once the create event is stored, or when no server
    /// answers).
    pub async fn backfill(&self, s: &Arc<Services>, room_id: &RoomId, limit: u32) -> ServiceResult<usize> {
        if !s.config.allow_federation {
            return Ok(0);
        }
        // One at a time: each takes the numbers before the oldest stored.
        let _one_at_a_time = self.backfill_lock.lock().await;
        let room = room_id.to_owned();
        let point = s.run(move |s| s.timeline.backfill_point(&room)).await?;
        tracing::debug!(%room_id, missing = ?point.missing, next = point.next_number, "backfill point");
        if point.missing.is_empty() {
            return Ok(0);
        }
        let version = RoomVersionId::try_from(point.version.as_str())
            .map_err(|e| ServiceError::Internal(format!("stored room version: {e}")))?;
        // The server of the oldest event's sender had what it references.
        let mut servers: Vec<OwnedServerName> = vec![point.oldest_sender_server.clone()];
        let room = room_id.to_owned();
        let members = s.run(move |s| s.timeline.servers_in_room(&room)).await?;
        servers.extend(
            members
                .into_iter()
                .filter(|server| *server != point.oldest_sender_server),
        );
        servers.retain(|server| *server != self.server_name);
        for server in servers.into_iter().take(SERVERS_TRIED) {
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                point.missing.clone(),
                limit.clamp(1, BACKFILL_LIMIT).into(),
            );
            let pdus = match self.client.send(&server, request).await {
                Ok(response) => response.pdus,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "backfill failed; trying another server");
                    continue;
                }
            };
            let events = self.verified_oldest_first(&server, &version, &pdus).await;
            let total = events.len() as u64;
            let mut stored = 0;
            for (i, event) in events.into_iter().enumerate() {
                // The newest takes the first free number; older ones, more.
                let n = point.next_number + (total - 1 - i as u64);
                let event_id = event.0.clone();
                let arrival = Arrival::Backfilled(position::backfilled(n));
                match self.handle_arrival(s, &server, room_id, &version, event, arrival).await {
                    Ok(Received::Accepted { .. }) => stored += 1,
                    Ok(other) => tracing::debug!(%event_id, outcome = ?other, "backfilled event not stored"),
                    Err(e) => tracing::info!(%event_id, error = %e, "backfilled event not stored"),
                }
            }
            tracing::info!(%room_id, %server, stored, "backfilled");
            return Ok(stored);
        }
        Ok(0)
    }
}
