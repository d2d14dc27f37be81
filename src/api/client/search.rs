//! `POST /search`: full-text search over the user's rooms.

use std::sync::Arc;

use ruma::api::client::search::search_events::v3::{self, OrderBy, ResultCategories};

use crate::api::{ApiError, Router, Ruma};
use crate::service::search::Query;
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(search);
}

async fn search(services: Arc<Services>, req: Ruma<v3::Request>) -> Result<v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let mut response = v3::Response::new(ResultCategories::new());
    // Only room events are searchable; without them there is nothing to find.
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(response);
    };
    let to_usize = |n: ruma::UInt| usize::try_from(u64::from(n)).unwrap_or(usize::MAX);
    let query = Query {
        search_term: criteria.search_term,
        keys: criteria
            .keys
            .unwrap_or_default()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        filter: criteria.filter,
        // The spec's default order is by rank.
        by_rank: !matches!(criteria.order_by, Some(OrderBy::Recent)),
        before_limit: to_usize(criteria.event_context.before_limit),
        after_limit: to_usize(criteria.event_context.after_limit),
        include_profile: criteria.event_context.include_profile,
        include_state: criteria.include_state.unwrap_or(false),
        group_by_room: criteria
            .groupings
            .group_by
            .iter()
            .any(|g| g.key.as_ref().is_some_and(|k| k.as_str() == "room_id")),
        group_by_sender: criteria
            .groupings
            .group_by
            .iter()
            .any(|g| g.key.as_ref().is_some_and(|k| k.as_str() == "sender")),
        next_batch: body.next_batch,
    };
    let room_events = services
        .run(move |s| s.search.search(s, &user, &device, &query))
        .await?;
    response.search_categories.room_events =
        serde_json::from_value(room_events).map_err(|e| ApiError::Internal(format!("search results: {e}")))?;
    Ok(response)
}
