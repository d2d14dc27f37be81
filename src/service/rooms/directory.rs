//! The room directory (`/publicRooms`): the published rooms, one page at a
//! time, for this server's clients and for other servers alike.

use ruma::OwnedRoomId;
use serde_json::Value as JsonValue;

use super::{directory_entry, RoomsService};
use crate::service::{ServiceError, ServiceResult, Services};

/// A `/publicRooms` request, from a client or another server.
#[derive(Debug, Default)]
pub struct DirectoryQuery {
    pub limit: Option<usize>,
    pub since: Option<String>,
    pub search: Option<String>,
    /// Room types to keep (`None` in it for rooms without a type); empty
    /// keeps all.
    pub room_types: Vec<Option<String>>,
    /// A third-party network (`third_party_instance_id`): this server
    /// bridges none, so it has no rooms there.
    pub third_party_network: Option<String>,
    /// `include_all_networks`: here the same rooms as Matrix alone.
    pub all_networks: bool,
}

/// One page of the directory.
#[derive(Debug)]
pub struct DirectoryPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    /// The number of rooms in all pages (another server's estimate).
    pub total: Option<u64>,
}

impl RoomsService {
    /// The published rooms, as directory entries.
    pub fn public_rooms(&self, s: &Services) -> ServiceResult<Vec<JsonValue>> {
        let mut out = Vec::new();
        for id in self.directory.public_rooms()? {
            let room_id = OwnedRoomId::try_from(id).map_err(|e| ServiceError::Internal(e.to_string()))?;
            let Some(record) = s.timeline.room(&room_id)? else {
                continue;
            };
            let state = s.timeline.state_events(s, record.state_snapshot)?;
            out.push(directory_entry(&room_id, &state));
        }
        Ok(out)
    }

    /// One page of the directory: `since` is an offset into the list,
    /// sorted by joined members (most first), then room ID.
    pub fn directory_page(&self, s: &Services, query: &DirectoryQuery) -> ServiceResult<DirectoryPage> {
        let offset: usize = match &query.since {
            Some(token) => token
                .strip_prefix('o')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| ServiceError::InvalidParam("since is not a directory token".to_owned()))?,
            None => 0,
        };
        let mut entries = if query.third_party_network.is_some() {
            Vec::new()
        } else {
            self.public_rooms(s)?
        };
        if let Some(term) = query
            .search
            .as_ref()
            .map(|t| t.to_lowercase())
            .filter(|t| !t.is_empty())
        {
            entries.retain(|e| {
                ["name", "topic", "canonical_alias"].iter().any(|k| {
                    e.get(*k)
                        .and_then(JsonValue::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(&term))
                })
            });
        }
        if !query.room_types.is_empty() {
            entries.retain(|e| {
                let room_type = e.get("room_type").and_then(JsonValue::as_str);
                query.room_types.iter().any(|t| t.as_deref() == room_type)
            });
        }
        entries.sort_by(|a, b| {
            let n = |e: &JsonValue| e["num_joined_members"].as_u64().unwrap_or(0);
            n(b).cmp(&n(a))
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = entries.len();
        let limit = query.limit.unwrap_or(total).max(1);
        let chunk: Vec<JsonValue> = entries.into_iter().skip(offset).take(limit).collect();
        let next_batch = (offset + chunk.len() < total).then(|| format!("o{}", offset + chunk.len()));
        let prev_batch = (offset > 0).then(|| format!("o{}", offset.saturating_sub(limit)));
        Ok(DirectoryPage {
            chunk,
            next_batch,
            prev_batch,
            total: Some(total as u64),
        })
    }
}
