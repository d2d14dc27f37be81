//! Synapse's media admin API: deleting local media, purging the cache of
//! other servers' media, and a user's uploads.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::users::path_user;
use super::{admin, backwards_param, count_param, ok, path_param, query_params};
use crate::api::{ApiError, Router};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add_raw(
        Method::DELETE,
        &["/_synapse/admin/v1/media/{server_name}/{media_id}"],
        delete_media,
    );
    router.add_raw(
        Method::POST,
        &["/_synapse/admin/v1/purge_media_cache"],
        purge_media_cache,
    );
    router.add_raw(Method::GET, &["/_synapse/admin/v1/users/{user_id}/media"], user_media);
}

/// `DELETE /_synapse/admin/v1/media/{server_name}/{media_id}`.
async fn delete_media(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let server_name = path_param(&req, "server_name")?;
    let media_id = path_param(&req, "media_id")?;
    let deleted = services.media.delete_local(server_name, media_id).await?;
    ok(json!({"total": deleted.len(), "deleted_media": deleted}))
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`.
async fn purge_media_cache(
    services: Arc<Services>,
    req: HttpRequest,
    _: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let params = query_params(&req);
    let before_ms = count_param(&params, "before_ts")?
        .ok_or_else(|| ApiError::MissingParam("Missing integer query parameter 'before_ts'".to_owned()))?;
    let deleted = services.media.purge_remote_cache(before_ms as u64).await?;
    ok(json!({"deleted": deleted}))
}

/// `GET /_synapse/admin/v1/users/{user_id}/media`: uploads oldest first
/// (`dir=b`: newest first).
async fn user_media(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let user_id = path_user(&req)?;
    if user_id.server_name() != services.config.server_name {
        return Err(ServiceError::BadRequest("Can only look up local users".to_owned()).into());
    }
    let params = query_params(&req);
    let from = count_param(&params, "from")?.unwrap_or(0);
    let limit = count_param(&params, "limit")?.unwrap_or(100);
    let backwards = backwards_param(&params)?;
    let exists = {
        let user_id = user_id.clone();
        services.run(move |s| s.users.exists(&user_id)).await?
    };
    if !exists {
        return Err(ServiceError::NotFound("Unknown user".to_owned()).into());
    }
    let mut uploads = services.media.uploads_of(&user_id).await?;
    if backwards {
        uploads.reverse();
    }
    let total = uploads.len();
    let media: Vec<_> = uploads
        .into_iter()
        .skip(from)
        .take(limit)
        .map(|u| {
            json!({
                "media_id": u.media_id,
                "media_type": u.content_type,
                "media_length": u.size,
                "upload_name": u.filename,
                "created_ts": u.created_ms,
                "last_access_ts": u.created_ms,
                "quarantined_by": null,
                "safe_from_quarantine": false,
            })
        })
        .collect();
    let next = from.saturating_add(media.len());
    let mut body = json!({"total": total, "media": media});
    if next < total {
        body["next_token"] = json!(next);
    }
    ok(body)
}
