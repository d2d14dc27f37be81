//! Media of other servers, fetched on first use: the authenticated
//! federation endpoint first, the deprecated unauthenticated one for servers
//! that do not know it (the spec's fallback, with `allow_remote=false`).
//! The caller keeps what is fetched, so the other server is asked once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, LOCATION};
use http::StatusCode;
use ruma::api::federation::authenticated_media::get_content;
use ruma::http_headers::ContentDisposition;
use ruma::ServerName;

use super::multipart;
use crate::service::federation::{FederationClient, FederationError, RawResponse};
use crate::service::{ServiceError, ServiceResult};

/// Room for a multipart answer's framing and metadata part beyond the
/// content itself.
const FRAMING_ALLOWANCE: usize = 64 * 1024;

/// Media as another server sent it.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// Fetches `mxc://server/media_id`, refusing more than `max_bytes`. `wait`
/// is how long the other server may wait for a pending upload; the whole
/// fetch gets that plus the federation request timeout.
pub async fn fetch(
    client: &FederationClient,
    server: &ServerName,
    media_id: &str,
    wait: Duration,
    max_bytes: usize,
) -> ServiceResult<Fetched> {
    let fetch = Fetch {
        client,
        server,
        timeout: client.request_timeout() + wait,
        max_bytes,
    };
    let fetched = match fetch.authenticated(media_id, wait).await {
        Err(error) if predates_authenticated_media(&error) => {
            tracing::info!(%server, %error, "falling back to the unauthenticated media endpoint");
            fetch.unauthenticated(media_id, wait).await
        }
        other => other,
    };
    let fetched = fetched.map_err(|error| {
        tracing::info!(%server, media_id, %error, "fetching remote media failed");
        fetch_error(error)
    })?;
    if fetched.bytes.len() > max_bytes {
        return Err(ServiceError::RemoteTooLarge(format!(
            "the media from {server} is larger than the {max_bytes} bytes this server accepts"
        )));
    }
    Ok(fetched)
}

/// Whether an error says the server has no authenticated media endpoint:
/// an unknown endpoint (404 `M_UNRECOGNIZED`, or a 404 from something that
/// is not Matrix at all), or a 400/405/501 from one that routes it oddly.
fn predates_authenticated_media(error: &FederationError) -> bool {
    match error {
        FederationError::Remote { status, errcode, .. } => match *status {
            StatusCode::NOT_FOUND => errcode.as_deref().is_none_or(|code| code == "M_UNRECOGNIZED"),
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => true,
            _ => false,
        },
        _ => false,
    }
}

/// One fetch from one server: what every step of it needs.
struct Fetch<'a> {
    client: &'a FederationClient,
    server: &'a ServerName,
    /// For each request of the fetch.
    timeout: Duration,
    max_bytes: usize,
}

impl Fetch<'_> {
    /// Through `/_matrix/federation/v1/media/download`, signed.
    async fn authenticated(&self, media_id: &str, wait: Duration) -> Result<Fetched, FederationError> {
        let mut request = get_content::v1::Request::new(media_id.to_owned());
        request.timeout_ms = wait;
        let answer_bytes = self.max_bytes.saturating_add(FRAMING_ALLOWANCE);
        let answer = self
            .client
            .send_raw(self.server, request, self.timeout, answer_bytes)
            .await?;
        self.multipart(answer).await
    }

    /// Through the deprecated `/_matrix/media/v3/download`, unsigned, and
    /// asking the server not to fetch from others in turn.
    async fn unauthenticated(&self, media_id: &str, wait: Duration) -> Result<Fetched, FederationError> {
        let path = format!(
            "/_matrix/media/v3/download/{}/{media_id}?allow_remote=false&timeout_ms={}",
            percent_encoding::utf8_percent_encode(self.server.as_str(), percent_encoding::NON_ALPHANUMERIC),
            wait.as_millis()
        );
        let answer = self
            .client
            .get_unsigned(self.server, &path, self.timeout, self.max_bytes)
            .await?;
        self.plain(answer).await
    }

    /// The content of a `multipart/mixed` answer, or what its `Location` holds.
    async fn multipart(&self, answer: RawResponse) -> Result<Fetched, FederationError> {
        let bad = |message: String| FederationError::BadResponse {
            destination: self.server.to_owned(),
            message,
        };
        let content_type = header(&answer.headers, CONTENT_TYPE).unwrap_or_default();
        let boundary = multipart::boundary(&content_type).map_err(bad)?;
        let parts = multipart::parse(&answer.body, &boundary).map_err(bad)?;
        let [_metadata, content, ..] = parts.as_slice() else {
            return Err(bad(format!("{} multipart parts, not 2", parts.len())));
        };
        if let Some(location) = content.header(LOCATION.as_str()) {
            return self.follow(location).await;
        }
        Ok(Fetched {
            bytes: content.body.to_vec(),
            content_type: content.header(CONTENT_TYPE.as_str()).and_then(clean_content_type),
            filename: content.header(CONTENT_DISPOSITION.as_str()).and_then(filename),
        })
    }

    /// The content of a plain answer (the deprecated endpoint), following
    /// one redirect.
    async fn plain(&self, answer: RawResponse) -> Result<Fetched, FederationError> {
        let unexpected = |message: String| FederationError::BadResponse {
            destination: self.server.to_owned(),
            message,
        };
        if answer.status.is_redirection() {
            let location = header(&answer.headers, LOCATION)
                .ok_or_else(|| unexpected(format!("{} without a Location", answer.status)))?;
            return self.follow(&location).await;
        }
        if answer.status != StatusCode::OK {
            return Err(unexpected(format!("unexpected status {}", answer.status)));
        }
        Ok(from_headers(&answer.headers, answer.body))
    }

    /// What a redirect from the server points to.
    async fn follow(&self, location: &str) -> Result<Fetched, FederationError> {
        let redirected = self
            .client
            .get_redirected(self.server, location, self.timeout, self.max_bytes)
            .await?;
        Ok(from_headers(&redirected.headers, redirected.body))
    }
}

fn from_headers(headers: &http::HeaderMap, bytes: Vec<u8>) -> Fetched {
    Fetched {
        bytes,
        content_type: header(headers, CONTENT_TYPE).as_deref().and_then(clean_content_type),
        filename: header(headers, CONTENT_DISPOSITION).as_deref().and_then(filename),
    }
}

fn header(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// A content type we will write back in our own headers: printable ASCII
/// of a sane length, else none (served as `application/octet-stream`).
fn clean_content_type(value: &str) -> Option<String> {
    let value = value.trim();
    let printable = value.bytes().all(|b| (b' '..=b'~').contains(&b));
    (printable && !value.is_empty() && value.len() <= 255).then(|| value.to_owned())
}

/// The file name a `Content-Disposition` gives, if any.
fn filename(value: &str) -> Option<String> {
    let name = ContentDisposition::try_from(value.as_bytes()).ok()?.filename?;
    // A name is for showing and saving; no control characters or paths.
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let name = name.rsplit(['/', '\\']).next().unwrap_or_default().trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// What a failed fetch tells the client: the other server's "not found"
/// and "not yet uploaded" as they are, too large as Synapse says it (502
/// `M_TOO_LARGE`), anything else a gateway failure.
fn fetch_error(error: FederationError) -> ServiceError {
    match &error {
        FederationError::Disabled => {
            ServiceError::NotFound("federation is off: media of other servers cannot be fetched".to_owned())
        }
        FederationError::TooLarge { .. } => ServiceError::RemoteTooLarge(error.to_string()),
        FederationError::Remote { status, .. } if *status == StatusCode::NOT_FOUND => {
            ServiceError::NotFound(error.to_string())
        }
        FederationError::Remote { errcode, .. } if errcode.as_deref() == Some("M_NOT_YET_UPLOADED") => {
            ServiceError::NotYetUploaded
        }
        _ => ServiceError::RemoteFailed(error.to_string()),
    }
}

/// One lock per key, for as long as someone holds or waits for it: the
/// concurrent requests for one remote media share one fetch.
#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a key's lock; dropped, it forgets the key once nobody else wants it.
pub struct KeyGuard<'a> {
    owner: &'a KeyedLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: String) -> KeyGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(key.clone()).or_default())
        };
        let held = Arc::clone(&lock).lock_owned().await;
        KeyGuard {
            owner: self,
            key,
            lock,
            _held: held,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().unwrap().len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.owner.locks.lock().unwrap_or_else(|e| e.into_inner());
        // The map's handle, this guard's and the held guard's: nobody else
        // waits (others clone only under the map's lock).
        if Arc::strong_count(&self.lock) == 3 {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_from_other_servers_are_cleaned() {
        assert_eq!(filename("attachment; filename=\"a b.png\"").as_deref(), Some("a b.png"));
        assert_eq!(
            filename("inline; filename*=UTF-8''%C3%A9t%C3%A9.txt").as_deref(),
            Some("été.txt")
        );
        assert_eq!(
            filename("attachment; filename=\"../../etc/passwd\"").as_deref(),
            Some("passwd")
        );
        assert_eq!(filename("attachment").as_deref(), None);
        assert_eq!(clean_content_type(" image/png ").as_deref(), Some("image/png"));
        assert_eq!(clean_content_type("text/plain\u{7f}"), None);
        assert_eq!(clean_content_type(""), None);
    }

    #[test]
    fn only_an_unknown_endpoint_falls_back() {
        let remote = |status: u16, errcode: Option<&str>| FederationError::Remote {
            destination: "b.test".try_into().unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
            errcode: errcode.map(str::to_owned),
            message: String::new(),
        };
        assert!(predates_authenticated_media(&remote(404, Some("M_UNRECOGNIZED"))));
        assert!(predates_authenticated_media(&remote(404, None)));
        assert!(predates_authenticated_media(&remote(400, Some("M_UNRECOGNIZED"))));
        assert!(!predates_authenticated_media(&remote(404, Some("M_NOT_FOUND"))));
        assert!(!predates_authenticated_media(&remote(502, None)));
        assert!(matches!(
            fetch_error(remote(404, Some("M_NOT_FOUND"))),
            ServiceError::NotFound(_)
        ));
        assert!(matches!(
            fetch_error(remote(504, Some("M_NOT_YET_UPLOADED"))),
            ServiceError::NotYetUploaded
        ));
        assert!(matches!(fetch_error(remote(500, None)), ServiceError::RemoteFailed(_)));
    }

    #[tokio::test]
    async fn one_key_is_held_once_and_forgotten_after() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock("a".to_owned()).await;
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _second = locks.lock("a".to_owned()).await;
            })
        };
        let other = locks.lock("b".to_owned()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second holder of a waits");
        drop(other);
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter gets the lock")
            .unwrap();
        assert_eq!(locks.len(), 0);
    }
}
