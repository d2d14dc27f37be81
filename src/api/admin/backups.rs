//! `/_conduit/admin/v1/backups`: take a backup now, list them (Conduit's
//! own; Synapse has no such endpoint).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::admin;
use crate::api::{ApiError, Router};
use crate::database::BackupSummary;
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add_raw(Method::POST, &["/_conduit/admin/v1/backups"], take);
    router.add_raw(Method::GET, &["/_conduit/admin/v1/backups"], list);
}

fn summary(backup: &BackupSummary) -> serde_json::Value {
    json!({
        "backup_id": backup.id,
        "timestamp": backup.timestamp,
        "size": backup.size,
        "files": backup.files,
    })
}

/// `POST`: takes a backup now; answers once it is complete.
async fn take(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let taken = services.backups.take().await?;
    let mut body = summary(&taken.database);
    body["media_files_copied"] = taken.media_files_copied.into();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET`: the backups in the backup directory, oldest first.
async fn list(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    admin(&services, &req).await?;
    let backups = services.run(|s| s.backups.list()).await?;
    Ok(HttpResponse::Ok().json(json!({"backups": backups.iter().map(summary).collect::<Vec<_>>()})))
}
