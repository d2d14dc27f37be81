//! The room directory's requests and answers, which the client and
//! federation `/publicRooms` endpoints share.

use ruma::directory::{Filter, PublicRoomsChunk, RoomNetwork};
use ruma::UInt;
use serde_json::Value as JsonValue;

use crate::service::rooms::DirectoryQuery;

/// A `/publicRooms` request in the service's terms.
pub fn directory_query(
    limit: Option<UInt>,
    since: Option<String>,
    filter: Filter,
    network: RoomNetwork,
) -> DirectoryQuery {
    let (third_party_network, all_networks) = match network {
        RoomNetwork::ThirdParty(network) => (Some(network), false),
        RoomNetwork::All => (None, true),
        _ => (None, false),
    };
    DirectoryQuery {
        limit: limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX)),
        since,
        search: filter.generic_search_term,
        room_types: filter
            .room_types
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect(),
        third_party_network,
        all_networks,
    }
}

/// Directory entries as ruma's; an entry that does not fit is left out.
pub fn directory_chunk(rooms: Vec<JsonValue>) -> Vec<PublicRoomsChunk> {
    rooms
        .into_iter()
        .filter_map(|room| serde_json::from_value(room).ok())
        .collect()
}

/// Fills one of the `/publicRooms` responses (client or federation, GET or
/// POST: the same fields) from a [`DirectoryPage`](crate::service::rooms::DirectoryPage).
macro_rules! directory_response {
    ($response:expr, $page:expr) => {{
        let mut response = $response;
        let page = $page;
        response.chunk = $crate::api::directory::directory_chunk(page.chunk);
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = page.total.and_then(ruma::UInt::new);
        response
    }};
}
pub(crate) use directory_response;
