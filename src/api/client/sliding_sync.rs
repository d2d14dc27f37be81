//! Simplified sliding sync (MSC4186), with its long-poll.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::api::client::sync::sync_events::v5;

use crate::api::{ApiError, Router, Ruma};
use crate::service::sliding_sync::{self, SyncRequest};
use crate::service::Services;

/// A long-poll never holds a connection longer than this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub fn register_routes(router: &mut Router) {
    router.add(sync);
}

async fn sync(services: Arc<Services>, req: Ruma<v5::Request>) -> Result<v5::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device()?.to_string();
    let bump_event_types = bump_event_types(&req.json_body);
    let body = req.body;
    let timeout = body.timeout.unwrap_or_default().min(MAX_TIMEOUT);
    let continues = body.pos.is_some();
    {
        let (user, presence) = (user.clone(), body.set_presence.as_str().to_owned());
        services.run(move |s| s.presence.touch(s, &user, &presence)).await?;
    }
    let request = Arc::new(SyncRequest { body, bump_event_types });

    // Subscribe before reading, so that nothing finished in between is missed.
    let watch = services.timeline.stream.subscribe(&user);
    let compute = |up_to: u64| {
        let (user, device, request) = (user.clone(), device.clone(), request.clone());
        services.run(move |s| sliding_sync::compute(s, &user, &device, &request, up_to))
    };
    let read_up_to = services.timeline.stream.visible();
    let mut outcome = compute(read_up_to).await?;
    // A new connection is answered at once (MSC4186 ignores its timeout).
    if continues && !outcome.has_news && !timeout.is_zero() {
        tracing::debug!(target: "conduit::wait", %user, since = read_up_to, "sliding sync waiting for a change");
        services.timeline.stream.wait(watch, read_up_to, timeout).await;
        let now = services.timeline.stream.visible();
        if now > read_up_to {
            outcome = compute(now).await?;
        }
    }
    let user_id = user.clone();
    let outcome = services
        .run(move |s| {
            s.sliding_sync.commit(&user_id, &device, &outcome)?;
            Ok(outcome)
        })
        .await?;
    Ok(outcome.response)
}

/// Each list's `bump_event_types`, which clients of the first simplified
/// sliding sync send and ruma's request type no longer reads.
fn bump_event_types(json_body: &[u8]) -> BTreeMap<String, Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        lists: BTreeMap<String, List>,
    }
    #[derive(serde::Deserialize)]
    struct List {
        #[serde(default)]
        bump_event_types: Vec<String>,
    }
    let body: Body = serde_json::from_slice(json_body).unwrap_or(Body { lists: BTreeMap::new() });
    body.lists
        .into_iter()
        .filter(|(_, list)| !list.bump_event_types.is_empty())
        .map(|(name, list)| (name, list.bump_event_types))
        .collect()
}
