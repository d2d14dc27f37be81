//! `media/download` and `media/thumbnail`: our media for other servers, as
//! `multipart/mixed` (an empty metadata part, then the content), the file
//! streamed from disk. Only this server's media is served.

use std::sync::Arc;

use actix_web::body::SizedStream;
use actix_web::HttpResponse;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use crate::api::client::media::type_and_disposition;
use crate::api::router::Written;
use crate::api::{ApiError, Router, Ruma};
use crate::service::media::{Framing, ServedFile, ThumbnailRequest};
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add(download);
    router.add(thumbnail);
}

async fn download(services: Arc<Services>, req: Ruma<get_content::v1::Request>) -> Result<Written, ApiError> {
    let body = req.body;
    let own = services.config.server_name.as_str();
    let found = services
        .media
        .download(own, &body.media_id, body.timeout_ms, None)
        .await?;
    multipart(&services, found.file).await
}

async fn thumbnail(
    services: Arc<Services>,
    req: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Written, ApiError> {
    let body = req.body;
    let request = ThumbnailRequest::new(
        body.width.into(),
        body.height.into(),
        body.method.as_ref().map(|m| m.as_str()),
        body.animated.unwrap_or(false),
    )?;
    let own = services.config.server_name.as_str();
    let found = services
        .media
        .download(own, &body.media_id, body.timeout_ms, None)
        .await?;
    let file = services.media.thumbnail(found, request).await?;
    multipart(&services, file).await
}

/// `file` framed as the spec's two parts, streamed.
async fn multipart(services: &Services, file: ServedFile) -> Result<Written, ApiError> {
    let opened = tokio::fs::File::open(&file.path).await.map_err(|e| {
        tracing::error!(path = %file.path.display(), error = %e, "media file missing");
        ApiError::from(ServiceError::NotFound(
            "the content of this media is missing".to_owned(),
        ))
    })?;
    let opened = opened.into_std().await;
    let size = opened
        .metadata()
        .map_err(|e| ApiError::from(ServiceError::Internal(format!("reading a media file: {e}"))))?
        .len();
    let (mime, disposition) = type_and_disposition(&file);
    let framing = Framing::new(mime.as_ref(), &disposition.to_string());
    let length = framing.head.len() as u64 + size + framing.tail.len() as u64;
    let content_type = framing.content_type;
    let body = stream::once(async move { Ok(Bytes::from(framing.head)) })
        .chain(services.media.stream_file(opened, 0, size))
        .chain(stream::once(async move { Ok(Bytes::from(framing.tail)) }));
    Ok(Written(
        HttpResponse::Ok()
            .content_type(content_type)
            .body(SizedStream::new(length, body)),
    ))
}
