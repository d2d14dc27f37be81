//! URL previews: a page fetched over HTTP(S), its OpenGraph data (or title)
//! extracted, the result cached. The fetch never reaches a non-public
//! address unless the operator allows its range: literal hosts are checked
//! before connecting, names after DNS resolution, and both again on every
//! redirect.

use std::sync::Arc;
use std::time::Duration;

use reqwest::redirect::Policy;
use reqwest::Url;
use serde_json::{Map, Value};

use crate::config::{Config, IpRange};
use crate::database::media::{MediaTables, UrlPreviewRecord};
use crate::service::address_guard::{AddressGuard, Refused};
use crate::service::{now_ms, ServiceError, ServiceResult};

/// Pages beyond this are cut (the `<head>` comes first).
const MAX_PAGE_BYTES: usize = 1024 * 1024;
const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;
/// A cached preview is reused this long.
const CACHE_LIFETIME_MS: u64 = 60 * 60 * 1000;
const MAX_VALUE_CHARS: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct PreviewConfig {
    pub enabled: bool,
    pub allowed_ranges: Vec<IpRange>,
}

impl From<&Config> for PreviewConfig {
    fn from(config: &Config) -> Self {
        Self {
            enabled: config.url_preview_enabled,
            allowed_ranges: config.url_preview_allowed_ranges.clone(),
        }
    }
}

/// An image found for a preview, to be stored as media.
pub struct FetchedImage {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub dimensions: Option<(u32, u32)>,
}

pub struct Previewer {
    guard: Arc<AddressGuard>,
    /// Built only when previews are on.
    client: Option<reqwest::Client>,
    tables: Arc<MediaTables>,
}

impl Previewer {
    pub fn new(config: PreviewConfig, tables: MediaTables) -> ServiceResult<Self> {
        let guard = Arc::new(AddressGuard::new(config.allowed_ranges));
        let client = if config.enabled {
            let redirect_guard = Arc::clone(&guard);
            let client = reqwest::Client::builder()
                .dns_resolver(Arc::clone(&guard))
                .redirect(Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        return attempt.error("too many redirects");
                    }
                    match redirect_guard.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(e) => attempt.error(Refused(e)),
                    }
                }))
                // A proxy from the environment would connect for us,
                // around the address check.
                .no_proxy()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT / 2)
                .user_agent(concat!("Conduit/", env!("CARGO_PKG_VERSION"), " (URL preview)"))
                .build()
                .map_err(|e| ServiceError::Internal(format!("building the URL preview client: {e}")))?;
            Some(client)
        } else {
            None
        };
        Ok(Self {
            guard,
            client,
            tables: Arc::new(tables),
        })
    }

    fn client(&self) -> ServiceResult<&reqwest::Client> {
        self.client
            .as_ref()
            .ok_or_else(|| ServiceError::Forbidden("URL previews are turned off on this server".to_owned()))
    }

    /// A preview fetched within the last hour.
    pub async fn cached(&self, url: &str) -> ServiceResult<Option<Value>> {
        self.client()?;
        let tables = Arc::clone(&self.tables);
        let url = url.to_owned();
        let record = tokio::task::spawn_blocking(move || tables.url_preview(&url))
            .await
            .map_err(|_| ServiceError::Internal("reading the preview cache was cancelled".to_owned()))??;
        Ok(record
            .filter(|r| now_ms().saturating_sub(r.fetched_ms) < CACHE_LIFETIME_MS)
            .and_then(|r| serde_json::from_str(&r.json).ok()))
    }

    pub async fn store(&self, url: &str, og: &Value) -> ServiceResult<()> {
        let tables = Arc::clone(&self.tables);
        let url = url.to_owned();
        let record = UrlPreviewRecord {
            fetched_ms: now_ms(),
            json: og.to_string(),
        };
        tokio::task::spawn_blocking(move || tables.put_url_preview(&url, &record))
            .await
            .map_err(|_| ServiceError::Internal("writing the preview cache was cancelled".to_owned()))??;
        Ok(())
    }

    /// Fetches `url`: its OpenGraph data, and the image it names (or is).
    pub async fn fetch(&self, url: &str) -> ServiceResult<(Value, Option<FetchedImage>)> {
        let client = self.client()?;
        let url = Url::parse(url).map_err(|e| ServiceError::InvalidParam(format!("not a URL: {e}")))?;
        self.guard.check_url(&url).map_err(ServiceError::Forbidden)?;
        tracing::debug!(%url, "fetching a URL preview");
        let (final_url, content_type, body) = self.get(client, url, MAX_PAGE_BYTES, true).await?;
        if content_type.starts_with("image/") {
            let image = image_of(body, content_type);
            return Ok((Value::Object(Map::new()), image));
        }
        if !(content_type.starts_with("text/html") || content_type.starts_with("application/xhtml")) {
            return Ok((Value::Object(Map::new()), None));
        }
        let mut og = parse_html(&String::from_utf8_lossy(&body));
        // The page's image is a nicety: failing to fetch it fails nothing.
        let mut image = None;
        if let Some(Value::String(src)) = og.remove("og:image") {
            if let Ok(image_url) = final_url.join(&src) {
                if self.guard.check_url(&image_url).is_ok() {
                    if let Ok((_, image_type, bytes)) = self.get(client, image_url, MAX_IMAGE_BYTES, false).await {
                        if image_type.starts_with("image/") {
                            image = image_of(bytes, image_type);
                        }
                    }
                }
            }
        }
        Ok((Value::Object(og), image))
    }

    /// GETs `url`; a body over `limit` is cut there (`truncate`) or refused.
    async fn get(
        &self,
        client: &reqwest::Client,
        url: Url,
        limit: usize,
        truncate: bool,
    ) -> ServiceResult<(Url, String, Vec<u8>)> {
        let mut response = client.get(url).send().await.map_err(fetch_error)?;
        if !response.status().is_success() {
            return Err(ServiceError::RemoteFailed(format!(
                "the page answered {}",
                response.status()
            )));
        }
        let final_url = response.url().clone();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > limit {
                if truncate {
                    body.extend_from_slice(&chunk[..limit - body.len()]);
                    break;
                }
                return Err(ServiceError::RemoteFailed(
                    "the content is too large to preview".to_owned(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((final_url, content_type, body))
    }
}

fn fetch_error(e: reqwest::Error) -> ServiceError {
    // The guard's refusals arrive wrapped; say them plainly.
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return ServiceError::Forbidden(refused.0.clone());
        }
        source = err.source();
    }
    ServiceError::RemoteFailed(format!("could not fetch the URL: {e}"))
}

fn image_of(bytes: Vec<u8>, content_type: String) -> Option<FetchedImage> {
    let dimensions = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    // Something that says it is an image but does not look like one is dropped.
    dimensions.map(|d| FetchedImage {
        bytes,
        content_type: content_type.split(';').next().unwrap_or("").trim().to_owned(),
        dimensions: Some(d),
    })
}

/// OpenGraph `og:*` properties of an HTML page, with the `<title>` and
/// `description` meta tag as fallbacks for `og:title` and `og:description`.
pub fn parse_html(html: &str) -> Map<String, Value> {
    let mut og = Map::new();
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(found) = lower[at..].find("<meta") {
        let start = at + found + "<meta".len();
        let Some(len) = lower[start..].find('>') else { break };
        let attrs = attributes(&html[start..start + len]);
        at = start + len;
        let key = attrs
            .iter()
            .find(|(n, _)| n == "property" || n == "name")
            .map(|(_, v)| v.to_ascii_lowercase());
        let content = attrs.iter().find(|(n, _)| n == "content").map(|(_, v)| clip(v));
        match (key, content) {
            (Some(key), Some(content)) if key.starts_with("og:") && og.len() < 50 => {
                og.entry(key).or_insert(Value::String(content));
            }
            (Some(key), Some(content)) if key == "description" => description = Some(content),
            _ => {}
        }
    }
    if !og.contains_key("og:title") {
        if let Some(start) = lower.find("<title") {
            let text_start = lower[start..].find('>').map(|i| start + i + 1);
            let text_end = text_start.and_then(|s| lower[s..].find("</title").map(|i| s + i));
            if let (Some(s), Some(e)) = (text_start, text_end) {
                let title = decode_entities(html[s..e].trim());
                if !title.is_empty() {
                    og.insert("og:title".to_owned(), Value::String(clip(&title)));
                }
            }
        }
    }
    if let Some(description) = description {
        og.entry("og:description").or_insert(Value::String(description));
    }
    og
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_VALUE_CHARS).collect()
}

/// The attributes of a tag's inside, names lowercased, values decoded.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
        let name_len = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        if name_len == 0 {
            return out;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        rest = rest[name_len..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, remaining) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                    Some(end) => (&after[1..1 + end], &after[end + 2..]),
                    None => (&after[1..], ""),
                },
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = decode_entities(raw);
            rest = remaining;
        }
        out.push((name, value));
    }
}

/// The common character references; others are left as written.
fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_and_fallbacks_are_read() {
        let html = r#"<html><head><title> A &amp; B </title>
            <META property="og:title" content="The &quot;title&quot;">
            <meta name=description content='plain description'>
            <meta property="og:image" content="/img.png" />
            <meta content="x" property="og:type"></head><body>"#;
        let og = parse_html(html);
        assert_eq!(og["og:title"], "The \"title\"");
        assert_eq!(og["og:image"], "/img.png");
        assert_eq!(og["og:type"], "x");
        assert_eq!(og["og:description"], "plain description");
        let og = parse_html("<title>Only &#x41;&#66; title</title><meta name=x");
        assert_eq!(og["og:title"], "Only AB title");
        assert_eq!(og.len(), 1);
    }
}
