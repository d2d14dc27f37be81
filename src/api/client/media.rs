//! The media repository's endpoints. Bodies stream both ways (uploads to
//! disk as they arrive, downloads from disk with `Range` support), so these
//! handlers read the request themselves instead of through ruma's types.

use std::sync::Arc;
use std::time::Duration;

use actix_files::NamedFile;
use actix_web::body::{BoxBody, SizedStream};
use actix_web::http::header::{
    self, Charset, ContentDisposition, DispositionParam, DispositionType, ExtendedValue, HeaderValue,
};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::api::router::{authenticate_raw, authenticate_raw_limited};
use crate::api::{ApiError, Router};
use crate::service::media::{Download, ServedFile, ThumbnailRequest, UploadSink};
use crate::service::rate_limits::RateClass;
use crate::service::{ServiceError, Services};

pub fn register_routes(router: &mut Router) {
    router.add_raw(
        Method::POST,
        &["/_matrix/media/v3/upload", "/_matrix/media/r0/upload"],
        upload,
    );
    router.add_raw(Method::POST, &["/_matrix/media/v1/create"], create);
    router.add_raw(
        Method::PUT,
        &["/_matrix/media/v3/upload/{server_name}/{media_id}"],
        upload_to_created,
    );
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/client/v1/media/config",
            "/_matrix/media/v3/config",
            "/_matrix/media/r0/config",
        ],
        config,
    );
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/client/v1/media/download/{server_name}/{media_id}",
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/",
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
        ],
        |s, r, _| download(s, r, Access::Authenticated),
    );
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/media/v3/download/{server_name}/{media_id}",
            "/_matrix/media/v3/download/{server_name}/{media_id}/",
            "/_matrix/media/v3/download/{server_name}/{media_id}/{file_name}",
            "/_matrix/media/r0/download/{server_name}/{media_id}",
            "/_matrix/media/r0/download/{server_name}/{media_id}/",
            "/_matrix/media/r0/download/{server_name}/{media_id}/{file_name}",
        ],
        |s, r, _| download(s, r, Access::Legacy),
    );
    router.add_raw(
        Method::GET,
        &["/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}"],
        |s, r, _| thumbnail(s, r, Access::Authenticated),
    );
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/media/v3/thumbnail/{server_name}/{media_id}",
            "/_matrix/media/r0/thumbnail/{server_name}/{media_id}",
        ],
        |s, r, _| thumbnail(s, r, Access::Legacy),
    );
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/client/v1/media/preview_url",
            "/_matrix/media/v3/preview_url",
            "/_matrix/media/r0/preview_url",
        ],
        preview_url,
    );
}

/// Types a browser may show inline without risk of running them (the
/// spec's list); everything else is served as an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The spec's default wait for a pending upload.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `/_matrix/client/v1/media/…`: needs an access token.
    Authenticated,
    /// The deprecated `/_matrix/media/v3/…`: no token, and only media from
    /// before the configured cut-over.
    Legacy,
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

#[derive(Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    #[serde(default)]
    animated: bool,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct PreviewQuery {
    url: String,
}

async fn upload(services: Arc<Services>, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let (user, _) = authenticate_raw_limited(&services, &req, RateClass::MediaUpload).await?;
    let query: UploadQuery = query(&req)?;
    let sink = receive(&services, &req, payload).await?;
    let uri = services
        .media
        .complete_upload(sink, &user, content_type(&req), query.filename, None)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "content_uri": uri })))
}

async fn create(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    // The PUT that later fills the created ID is not counted again.
    let (user, _) = authenticate_raw_limited(&services, &req, RateClass::MediaUpload).await?;
    let (uri, expires) = services.media.create_pending(&user).await?;
    Ok(HttpResponse::Ok().json(json!({ "content_uri": uri, "unused_expires_at": expires })))
}

async fn upload_to_created(
    services: Arc<Services>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (user, _) = authenticate_raw(&services, &req).await?;
    let query: UploadQuery = query(&req)?;
    let (server_name, media_id) = media_path(&req)?;
    // Refuse before reading what may be a large body.
    services.media.check_pending(&user, server_name, media_id).await?;
    let sink = receive(&services, &req, payload).await?;
    services
        .media
        .complete_upload(
            sink,
            &user,
            content_type(&req),
            query.filename,
            Some((server_name, media_id)),
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

async fn config(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    authenticate_raw(&services, &req).await?;
    Ok(HttpResponse::Ok().json(json!({ "m.upload.size": services.media.max_upload_size() })))
}

async fn download(services: Arc<Services>, req: HttpRequest, access: Access) -> Result<HttpResponse, ApiError> {
    if access == Access::Authenticated {
        authenticate_raw(&services, &req).await?;
    }
    let query: DownloadQuery = query(&req)?;
    let mut file = find(&services, &req, access, query.timeout_ms).await?.file;
    if let Some(name) = req.match_info().get("file_name").filter(|n| !n.is_empty()) {
        file.filename = Some(name.to_owned());
    }
    serve(&services, &req, file).await
}

async fn thumbnail(services: Arc<Services>, req: HttpRequest, access: Access) -> Result<HttpResponse, ApiError> {
    if access == Access::Authenticated {
        authenticate_raw(&services, &req).await?;
    }
    let query: ThumbnailQuery = query(&req)?;
    let request = ThumbnailRequest::new(
        query.width.into(),
        query.height.into(),
        query.method.as_deref(),
        query.animated,
    )?;
    let found = find(&services, &req, access, query.timeout_ms).await?;
    let file = services.media.thumbnail(found, request).await?;
    serve(&services, &req, file).await
}

async fn preview_url(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (user, _) = authenticate_raw(&services, &req).await?;
    let query: PreviewQuery = query(&req)?;
    let og = services.media.preview_url(&user, &query.url).await?;
    Ok(HttpResponse::Ok().json(og))
}

/// Streams the body into an upload, refusing it as soon as it is known to
/// be too large.
async fn receive(services: &Services, req: &HttpRequest, mut payload: web::Payload) -> Result<UploadSink, ApiError> {
    let limit = services.media.max_upload_size();
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut sink = services.media.begin_upload();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => sink.write(&chunk).await?,
            Err(e) => {
                sink.discard().await;
                return Err(ServiceError::BadRequest(format!("could not read the upload: {e}")).into());
            }
        }
    }
    Ok(sink)
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            let message = e.to_string();
            if message.contains("missing field") {
                ApiError::MissingParam(message)
            } else {
                ApiError::InvalidParam(message)
            }
        })
}

fn media_path(req: &HttpRequest) -> Result<(&str, &str), ApiError> {
    let info = req.match_info();
    match (info.get("server_name"), info.get("media_id")) {
        (Some(server), Some(media)) => Ok((server, media)),
        _ => Err(ApiError::Internal("media route without its path variables".to_owned())),
    }
}

fn content_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The media the path names (fetched from its server when it is another's),
/// waiting up to `timeout_ms` for a pending upload. The unauthenticated endpoints are frozen: media from after the
/// cut-over is not found there (the spec's answer), only through `/client/v1`.
async fn find(
    services: &Services,
    req: &HttpRequest,
    access: Access,
    timeout_ms: Option<u64>,
) -> Result<Download, ApiError> {
    let (server_name, media_id) = media_path(req)?;
    let wait = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    // Media of other servers is fetched for the unauthenticated endpoints
    // only while they may still serve it.
    let fetch =
        (access == Access::Authenticated || services.media.legacy_may_fetch()).then_some(&*services.federation.client);
    let found = services.media.download(server_name, media_id, wait, fetch).await?;
    if access == Access::Legacy && !found.legacy_allowed {
        return Err(ServiceError::NotFound(
            "this media is only available through the authenticated /_matrix/client/v1/media endpoints".to_owned(),
        )
        .into());
    }
    Ok(found)
}

/// Streams a stored file with its type, a safe disposition and the
/// headers that keep a browser from running it; `Range` is honoured.
async fn serve(services: &Services, req: &HttpRequest, file: ServedFile) -> Result<HttpResponse, ApiError> {
    let named = NamedFile::open_async(&file.path).await.map_err(|e| {
        tracing::error!(path = %file.path.display(), error = %e, "media file missing");
        ApiError::from(ServiceError::NotFound(
            "the content of this media is missing".to_owned(),
        ))
    })?;
    // NamedFile decides the answer (preconditions, Range, headers); the
    // bytes come from a FileStream over the same open file.
    let content = named
        .file()
        .try_clone()
        .map_err(|e| ApiError::from(ServiceError::Internal(format!("opening a media file: {e}"))))?;
    let size = named.metadata().len();
    let (mime, disposition) = type_and_disposition(&file);
    let mut response = named
        .set_content_type(mime)
        // The type as uploaded: no charset the uploader did not state.
        .prefer_utf8(false)
        .set_content_disposition(disposition)
        .into_response(req);
    if let Some((start, len)) = served_range(&response, size) {
        response = response.set_body(BoxBody::new(SizedStream::new(
            len,
            services.media.stream_file(content, start, len),
        )));
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
        ),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Content under a media ID never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(response)
}

/// The type a stored file is served as, and a safe disposition: inline
/// only for types a browser will not run, with the file's name.
pub(crate) fn type_and_disposition(file: &ServedFile) -> (mime::Mime, ContentDisposition) {
    let mime: mime::Mime = file.content_type.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let disposition = ContentDisposition {
        disposition: if INLINE_TYPES.contains(&mime.essence_str()) {
            DispositionType::Inline
        } else {
            DispositionType::Attachment
        },
        parameters: file.filename.as_deref().map(filename_params).unwrap_or_default(),
    };
    (mime, disposition)
}

/// The bytes a response from NamedFile carries: the whole file for a 200,
/// its `Content-Range` for a 206, none otherwise (304, 412, 416).
fn served_range(response: &HttpResponse, size: u64) -> Option<(u64, u64)> {
    match response.status() {
        StatusCode::OK => Some((0, size)),
        StatusCode::PARTIAL_CONTENT => {
            let range = response.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
            let (first, last) = range.strip_prefix("bytes ")?.split_once('/')?.0.split_once('-')?;
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            (first <= last && last < size).then_some((first, last - first + 1))
        }
        _ => None,
    }
}

/// `filename="…"` in plain ASCII for old clients, `filename*=UTF-8''…` with
/// the real name.
fn filename_params(name: &str) -> Vec<DispositionParam> {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    vec![
        DispositionParam::Filename(ascii),
        DispositionParam::FilenameExt(ExtendedValue {
            charset: Charset::Ext("UTF-8".to_owned()),
            language_tag: None,
            value: name.as_bytes().to_vec(),
        }),
    ]
}
