//! The user directory over local users (see
//! `RoomsService::search_user_directory` for whom it shows).

use std::sync::Arc;

use ruma::api::client::user_directory::search_users;
use ruma::OwnedMxcUri;

use crate::api::{ApiError, Router, Ruma};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(search);
}

/// Upper bound on results, whatever the client asks for.
const MAX_LIMIT: usize = 100;

async fn search(
    services: Arc<Services>,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response, ApiError> {
    let searcher = req.user()?.to_owned();
    let term = req.body.search_term;
    let limit = usize::try_from(u64::from(req.body.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let (entries, limited) = services
        .run(move |s| s.rooms.search_user_directory(s, &searcher, &term, limit))
        .await?;
    let results = entries
        .into_iter()
        .map(|e| {
            let mut user = search_users::v3::User::new(e.user_id);
            user.display_name = e.display_name;
            user.avatar_url = e.avatar_url.map(OwnedMxcUri::from);
            user
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}
