//! Server-side key backups (`/room_keys`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version, get_backup_info,
    get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version, RoomKeyBackup,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::value::RawValue;

use crate::api::{ApiError, Router, Ruma};
use crate::service::key_backups::{BackedUpKey, BackupInfo};
use crate::service::Services;

pub fn register_routes(router: &mut Router) {
    router.add(create_version);
    router.add(latest_version);
    router.add(version_info);
    router.add(update_version);
    router.add(delete_version);
    router.add(put_all);
    router.add(put_room);
    router.add(put_session);
    router.add(get_all);
    router.add(get_room);
    router.add(get_session);
    router.add(delete_all);
    router.add(delete_room);
    router.add(delete_session);
}

fn raw_json<T>(json: String) -> Result<Raw<T>, ApiError> {
    RawValue::from_string(json)
        .map(Raw::from_json)
        .map_err(|e| ApiError::Internal(format!("stored backup JSON: {e}")))
}

fn count(n: u64) -> UInt {
    UInt::new(n).unwrap_or_default()
}

/// Keys grouped by room, as the whole-backup endpoints answer.
fn by_room(keys: Vec<BackedUpKey>) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>, ApiError> {
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<_>>> = BTreeMap::new();
    for (room, session, json) in keys {
        let room = OwnedRoomId::try_from(room).map_err(|e| ApiError::Internal(format!("stored room ID: {e}")))?;
        rooms.entry(room).or_default().insert(session, raw_json(json)?);
    }
    Ok(rooms.into_iter().map(|(r, s)| (r, RoomKeyBackup::new(s))).collect())
}

fn sessions<T>(keys: Vec<BackedUpKey>) -> Result<BTreeMap<String, Raw<T>>, ApiError> {
    keys.into_iter()
        .map(|(_, session, json)| Ok((session, raw_json(json)?)))
        .collect()
}

async fn create_version(
    services: Arc<Services>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let algorithm = req.body.algorithm.json().get().to_owned();
    let version = services.run(move |s| s.key_backups.create(&user, &algorithm)).await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn latest_version(
    services: Arc<Services>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let info: BackupInfo = services.run(move |s| s.key_backups.latest(&user)).await?;
    Ok(get_latest_backup_info::v3::Response::new(
        raw_json(info.algorithm_json)?,
        count(info.count),
        info.etag,
        info.version,
    ))
}

async fn version_info(
    services: Arc<Services>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let version = req.body.version;
    let info = services.run(move |s| s.key_backups.info(&user, &version)).await?;
    Ok(get_backup_info::v3::Response::new(
        raw_json(info.algorithm_json)?,
        count(info.count),
        info.etag,
        info.version,
    ))
}

async fn update_version(
    services: Arc<Services>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let version = req.body.version;
    let algorithm = req.body.algorithm.json().get().to_owned();
    services
        .run(move |s| s.key_backups.update(&user, &version, &algorithm))
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    services: Arc<Services>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let version = req.body.version;
    services
        .run(move |s| s.key_backups.delete_version(&user, &version))
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn put_keys(
    services: Arc<Services>,
    user: ruma::OwnedUserId,
    version: String,
    keys: Vec<BackedUpKey>,
) -> Result<(UInt, String), ApiError> {
    let (n, etag) = services
        .run(move |s| s.key_backups.put_keys(&user, &version, &keys))
        .await?;
    Ok((count(n), etag))
}

async fn put_all(
    services: Arc<Services>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let mut keys = Vec::new();
    for (room, backup) in body.rooms {
        for (session, data) in backup.sessions {
            keys.push((room.to_string(), session, data.json().get().to_owned()));
        }
    }
    let (n, etag) = put_keys(services, user, body.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, n))
}

async fn put_room(
    services: Arc<Services>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let keys = body
        .sessions
        .into_iter()
        .map(|(session, data)| (body.room_id.to_string(), session, data.json().get().to_owned()))
        .collect();
    let (n, etag) = put_keys(services, user, body.version, keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, n))
}

async fn put_session(
    services: Arc<Services>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let keys = vec![(
        body.room_id.to_string(),
        body.session_id,
        body.session_data.json().get().to_owned(),
    )];
    let (n, etag) = put_keys(services, user, body.version, keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, n))
}

async fn get_all(
    services: Arc<Services>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let version = req.body.version;
    let keys = services
        .run(move |s| s.key_backups.keys(&user, &version, None, None))
        .await?;
    Ok(get_backup_keys::v3::Response::new(by_room(keys)?))
}

async fn get_room(
    services: Arc<Services>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let keys = services
        .run(move |s| {
            s.key_backups
                .keys(&user, &body.version, Some(body.room_id.as_str()), None)
        })
        .await?;
    Ok(get_backup_keys_for_room::v3::Response::new(sessions(keys)?))
}

async fn get_session(
    services: Arc<Services>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let keys = services
        .run(move |s| {
            s.key_backups.keys(
                &user,
                &body.version,
                Some(body.room_id.as_str()),
                Some(&body.session_id),
            )
        })
        .await?;
    let (_, _, json) = keys
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Service(crate::service::ServiceError::NotFound("no such session key".to_owned())))?;
    Ok(get_backup_keys_for_session::v3::Response::new(raw_json(json)?))
}

async fn delete_keys(
    services: Arc<Services>,
    user: ruma::OwnedUserId,
    version: String,
    room: Option<String>,
    session: Option<String>,
) -> Result<(UInt, String), ApiError> {
    let (n, etag) = services
        .run(move |s| {
            s.key_backups
                .delete_keys(&user, &version, room.as_deref(), session.as_deref())
        })
        .await?;
    Ok((count(n), etag))
}

async fn delete_all(
    services: Arc<Services>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let (n, etag) = delete_keys(services, user, req.body.version, None, None).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, n))
}

async fn delete_room(
    services: Arc<Services>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let (n, etag) = delete_keys(services, user, body.version, Some(body.room_id.to_string()), None).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, n))
}

async fn delete_session(
    services: Arc<Services>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let (n, etag) = delete_keys(
        services,
        user,
        body.version,
        Some(body.room_id.to_string()),
        Some(body.session_id),
    )
    .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, n))
}
