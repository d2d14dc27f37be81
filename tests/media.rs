//! The media repository over HTTP: uploads (direct and asynchronous),
//! downloads, thumbnails, authenticated media and the legacy cut-over,
//! size limits, `Range`, URL previews, and memory while streaming.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{assert_error, enc, TestServer};
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Uploads through `POST /_matrix/media/v3/upload`; returns the `mxc://` URI.
async fn upload(
    server: &TestServer,
    token: &str,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> String {
    server.upload_media(token, bytes, content_type, filename).await
}

/// `server/media_id` of an `mxc://` URI.
fn mxc_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").expect("an mxc URI").to_owned()
}

/// GET with an optional token and extra headers.
async fn get(server: &TestServer, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = server.client.get(server.url(path));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

async fn download(server: &TestServer, token: &str, uri: &str) -> reqwest::Response {
    get(
        server,
        &format!("/_matrix/client/v1/media/download/{}", mxc_path(uri)),
        Some(token),
        &[],
    )
    .await
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Pseudo-random bytes (xorshift), so large bodies do not compress.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Files under one of the media directory's subdirectories.
fn files_under(server: &TestServer, sub: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.dir.path().join("db").join("media").join(sub), &mut out);
    out
}

#[tokio::test]
async fn uploads_round_trip_byte_exact_and_identical_content_is_stored_once() {
    let server = TestServer::start_with("max_request_size = 62914560").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;

    let small = b"hello, media".to_vec();
    let uri = upload(&server, &alice, small.clone(), "text/plain", Some("hello wörld.txt")).await;
    assert!(uri.starts_with("mxc://localhost/"), "{uri}");
    let resp = download(&server, &bob, &uri).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/plain");
    let disposition = header(&resp, "content-disposition");
    assert!(disposition.starts_with("inline"), "{disposition}");
    assert!(
        disposition.contains("filename*=UTF-8''hello%20w%C3%B6rld.txt"),
        "{disposition}"
    );
    assert!(header(&resp, "content-security-policy").starts_with("sandbox"));
    assert_eq!(header(&resp, "cross-origin-resource-policy"), "cross-origin");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), small);

    // The name in the path replaces the stored one; HTML is never inline.
    let html = upload(
        &server,
        &alice,
        b"<script>alert(1)</script>".to_vec(),
        "text/html",
        None,
    )
    .await;
    let resp = get(
        &server,
        &format!("/_matrix/client/v1/media/download/{}/page.html", mxc_path(&html)),
        Some(&bob),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let disposition = header(&resp, "content-disposition");
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains("page.html"), "{disposition}");

    // 50 MiB, streamed both ways, identical to the byte.
    let large = noise(50 * 1024 * 1024, 7);
    let uri_large = upload(&server, &alice, large.clone(), "application/octet-stream", None).await;
    let resp = download(&server, &bob, &uri_large).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), large.len().to_string());
    assert_eq!(header(&resp, "content-disposition"), "attachment");
    let got = resp.bytes().await.unwrap();
    assert_eq!(sha256(&got), sha256(&large));

    // The same bytes again: a new URI, no new file.
    let files_before = files_under(&server, "files").len();
    assert_eq!(files_before, 3);
    let again = upload(&server, &bob, small.clone(), "text/plain", None).await;
    assert_ne!(again, uri);
    assert_eq!(files_under(&server, "files").len(), files_before);
    assert_eq!(
        download(&server, &alice, &again).await.bytes().await.unwrap().to_vec(),
        small
    );
    assert!(files_under(&server, "tmp").is_empty());

    let (status, config) = json_of(get(&server, "/_matrix/client/v1/media/config", Some(&bob), &[]).await).await;
    assert_eq!((status, config["m.upload.size"].as_u64()), (200, Some(62_914_560)));
}

#[tokio::test]
async fn files_are_stored_under_their_sha256_in_shards_made_at_start() {
    let server = TestServer::start().await;
    let files = server.dir.path().join("db").join("media").join("files");
    // All 256 shards exist before the first upload, so storing a file never
    // creates a directory (whose own entry would need syncing too).
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 256);
    let (_, alice, _) = server.register("alice", "pw").await;

    let bytes = b"a file in its shard".to_vec();
    let hex: String = sha256(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let shard = files.join(&hex[..2]);
    // A shard removed behind the server's back is made again.
    std::fs::remove_dir(&shard).unwrap();
    let uri = upload(&server, &alice, bytes.clone(), "text/plain", None).await;
    assert!(shard.join(&hex).is_file(), "{hex} not in its shard");
    assert_eq!(std::fs::read(shard.join(&hex)).unwrap(), bytes);
    assert_eq!(
        download(&server, &alice, &uri).await.bytes().await.unwrap().to_vec(),
        bytes
    );
    assert!(files_under(&server, "tmp").is_empty());
}

#[tokio::test]
async fn asynchronous_upload_fills_a_created_uri_once() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let (_, bob, _) = server.register("bob", "pw").await;

    let (status, created) = server
        .call("POST", "/_matrix/media/v1/create", Some(&alice), None)
        .await;
    assert_eq!(status, 200, "{created}");
    let uri = created["content_uri"].as_str().unwrap().to_owned();
    let expires = created["unused_expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(expires > now + 23 * 3600 * 1000 && expires <= now + 25 * 3600 * 1000);

    // Not there yet: a short wait ends in M_NOT_YET_UPLOADED.
    let path = format!("/_matrix/client/v1/media/download/{}?timeout_ms=200", mxc_path(&uri));
    assert_error(
        &json_of(get(&server, &path, Some(&bob), &[]).await).await,
        504,
        "M_NOT_YET_UPLOADED",
    );

    // Only the creator may upload.
    let put_path = format!("/_matrix/media/v3/upload/{}?filename=late.txt", mxc_path(&uri));
    assert_error(
        &server.call_raw("PUT", &put_path, Some(&bob), b"bob's".to_vec()).await,
        403,
        "M_FORBIDDEN",
    );

    // A download already waiting gets the content as soon as it lands.
    let mark = server.log_mark();
    let waiting = {
        let client = server.client.clone();
        let url = server.url(&format!(
            "/_matrix/client/v1/media/download/{}?timeout_ms=10000",
            mxc_path(&uri)
        ));
        let bob = bob.clone();
        tokio::spawn(async move { client.get(url).bearer_auth(bob).send().await.unwrap() })
    };
    server.wait_for_log(mark, &["download waiting for its upload"]).await;
    let (status, body) = server
        .call_raw("PUT", &put_path, Some(&alice), b"content later".to_vec())
        .await;
    assert_eq!((status, body), (200, json!({})));
    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-disposition").contains("late.txt"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"content later");

    // Content is never replaced; unknown IDs are not found.
    assert_error(
        &server.call_raw("PUT", &put_path, Some(&alice), b"again".to_vec()).await,
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );
    assert_error(
        &server
            .call_raw(
                "PUT",
                "/_matrix/media/v3/upload/localhost/nosuchid",
                Some(&alice),
                b"x".to_vec(),
            )
            .await,
        404,
        "M_NOT_FOUND",
    );

    // Five pending uploads per user (the default), then M_LIMIT_EXCEEDED.
    for _ in 0..5 {
        let (status, body) = server
            .call("POST", "/_matrix/media/v1/create", Some(&alice), None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_error(
        &server
            .call("POST", "/_matrix/media/v1/create", Some(&alice), None)
            .await,
        429,
        "M_LIMIT_EXCEEDED",
    );
    let (status, _) = server.call("POST", "/_matrix/media/v1/create", Some(&bob), None).await;
    assert_eq!(status, 200, "the limit is per user");
}

#[tokio::test]
async fn client_media_needs_a_token_and_legacy_paths_serve_only_media_from_before_the_cutover() {
    let server = TestServer::start_with("legacy_media_cutover = 2100-01-01").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let uri = upload(&server, &alice, b"old".to_vec(), "text/plain", None).await;
    let id = mxc_path(&uri);

    for path in [
        format!("/_matrix/client/v1/media/download/{id}"),
        format!("/_matrix/client/v1/media/thumbnail/{id}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
        "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org".to_owned(),
    ] {
        assert_error(
            &json_of(get(&server, &path, None, &[]).await).await,
            401,
            "M_MISSING_TOKEN",
        );
        assert_error(
            &json_of(get(&server, &path, Some("nope"), &[]).await).await,
            401,
            "M_UNKNOWN_TOKEN",
        );
    }
    assert_error(
        &server
            .call_raw("POST", "/_matrix/media/v3/upload", None, b"x".to_vec())
            .await,
        401,
        "M_MISSING_TOKEN",
    );
    // The token as a query parameter works too (older clients' URLs).
    let resp = get(
        &server,
        &format!("/_matrix/client/v1/media/download/{id}?access_token={alice}"),
        None,
        &[],
    )
    .await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"old");

    // Uploaded before the cut-over: the unauthenticated path still serves it.
    for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        let resp = get(&server, &format!("{prefix}/download/{id}"), None, &[]).await;
        assert_eq!(resp.status(), 200, "{prefix}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b"old");
    }

    // On a server whose cut-over has passed, new media is not found there.
    let frozen = TestServer::start_with("legacy_media_cutover = \"2024-09-01T00:00:00Z\"").await;
    let (_, carol, _) = frozen.register("carol", "pw").await;
    let uri = upload(&frozen, &carol, b"new".to_vec(), "text/plain", None).await;
    let id = mxc_path(&uri);
    assert_error(
        &json_of(get(&frozen, &format!("/_matrix/media/v3/download/{id}"), None, &[]).await).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(
        &json_of(
            get(
                &frozen,
                &format!("/_matrix/media/v3/thumbnail/{id}?width=32&height=32"),
                None,
                &[],
            )
            .await,
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(download(&frozen, &carol, &uri).await.status(), 200);
}

#[tokio::test]
async fn too_large_uploads_are_refused_and_leave_no_file() {
    let server = TestServer::start_with("max_request_size = 1048576").await;
    let (_, alice, _) = server.register("alice", "pw").await;

    // Announced too large: refused before the body is read.
    let resp = server
        .client
        .post(server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice)
        .body(noise(1024 * 1024 + 1, 1))
        .send()
        .await
        .unwrap();
    assert_error(&json_of(resp).await, 413, "M_TOO_LARGE");

    // Streamed without a length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|i| Ok(noise(256 * 1024, i + 2))).collect();
    let resp = server
        .client
        .post(server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(&json_of(resp).await, 413, "M_TOO_LARGE");

    assert!(
        files_under(&server, "tmp").is_empty(),
        "{:?}",
        files_under(&server, "tmp")
    );
    assert!(files_under(&server, "files").is_empty());
    // Exactly the limit is fine.
    let uri = upload(&server, &alice, noise(1024 * 1024, 3), "application/octet-stream", None).await;
    assert_eq!(
        download(&server, &alice, &uri).await.bytes().await.unwrap().len(),
        1024 * 1024
    );
}

#[tokio::test]
async fn unknown_and_remote_media_is_not_found() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    for path in [
        "/_matrix/client/v1/media/download/localhost/doesnotexist",
        "/_matrix/client/v1/media/download/localhost/bad.id",
        "/_matrix/client/v1/media/download/localhost/%2E%2E%2Fdb",
        "/_matrix/client/v1/media/download/matrix.org/abcdef",
        "/_matrix/client/v1/media/thumbnail/localhost/doesnotexist?width=32&height=32",
        "/_matrix/media/v3/download/localhost/doesnotexist",
    ] {
        assert_error(
            &json_of(get(&server, path, Some(&alice), &[]).await).await,
            404,
            "M_NOT_FOUND",
        );
    }
    let uri = upload(&server, &alice, b"x".to_vec(), "text/plain", None).await;
    let thumb = format!("/_matrix/client/v1/media/thumbnail/{}", mxc_path(&uri));
    assert_error(
        &json_of(get(&server, &thumb, Some(&alice), &[]).await).await,
        400,
        "M_MISSING_PARAM",
    );
    assert_error(
        &json_of(
            get(
                &server,
                &format!("{thumb}?width=32&height=32&method=stretch"),
                Some(&alice),
                &[],
            )
            .await,
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn gradient(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
    }))
}

/// A two-frame animated GIF.
fn animated_gif(width: u32, height: u32) -> Vec<u8> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        encoder.set_repeat(Repeat::Infinite).unwrap();
        for shade in [0u8, 200] {
            let frame = RgbaImage::from_pixel(width, height, image::Rgba([shade, 0, 255 - shade, 255]));
            encoder
                .encode_frame(image::Frame::from_parts(
                    frame,
                    0,
                    0,
                    image::Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap();
        }
    }
    out
}

async fn thumbnail(server: &TestServer, token: &str, uri: &str, query: &str) -> reqwest::Response {
    get(
        server,
        &format!("/_matrix/client/v1/media/thumbnail/{}?{query}", mxc_path(uri)),
        Some(token),
        &[],
    )
    .await
}

/// Status, content type, and dimensions of a thumbnail response.
async fn thumbnail_of(server: &TestServer, token: &str, uri: &str, query: &str) -> (String, (u32, u32), Vec<u8>) {
    let resp = thumbnail(server, token, uri, query).await;
    assert_eq!(resp.status(), 200, "{query}");
    let content_type = header(&resp, "content-type");
    let bytes = resp.bytes().await.unwrap().to_vec();
    let decoded = image::load_from_memory(&bytes).expect("a thumbnail decodes");
    (content_type, (decoded.width(), decoded.height()), bytes)
}

#[tokio::test]
async fn thumbnails_of_each_format_have_the_right_size() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;

    let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(1000, 500, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 50])
    }));
    let cases = [
        ("image/png", encode(&gradient(1000, 500), ImageFormat::Png), "image/png"),
        ("image/jpeg", encode(&rgb, ImageFormat::Jpeg), "image/jpeg"),
        (
            "image/webp",
            encode(&gradient(1000, 500), ImageFormat::WebP),
            "image/png",
        ),
        ("image/gif", animated_gif(1000, 500), "image/png"),
    ];
    for (content_type, bytes, thumbnail_type) in cases {
        let uri = upload(&server, &alice, bytes, content_type, None).await;
        // scale keeps the aspect ratio inside the 320x240 class.
        let (ct, size, first) = thumbnail_of(&server, &alice, &uri, "width=300&height=200&method=scale").await;
        assert_eq!(
            (ct.as_str(), size),
            (thumbnail_type, (320, 160)),
            "{content_type} scale"
        );
        // crop fills its class exactly.
        let (ct, size, _) = thumbnail_of(&server, &alice, &uri, "width=96&height=96&method=crop").await;
        assert_eq!((ct.as_str(), size), (thumbnail_type, (96, 96)), "{content_type} crop");
        let (_, size, _) = thumbnail_of(&server, &alice, &uri, "width=640&height=480&method=crop").await;
        assert_eq!(size, (640, 480), "{content_type} larger crop");
        // Made once: the second answer is the stored file.
        let (_, _, again) = thumbnail_of(&server, &alice, &uri, "width=300&height=200&method=scale").await;
        assert_eq!(again, first);
    }
    assert_eq!(files_under(&server, "thumbnails").len(), 12);

    // Asked for more than any class: the original itself.
    let jpeg = encode(&rgb, ImageFormat::Jpeg);
    let uri = upload(&server, &alice, jpeg.clone(), "image/jpeg", None).await;
    let (_, size, bytes) = thumbnail_of(&server, &alice, &uri, "width=1200&height=1000").await;
    assert_eq!((size, bytes), ((1000, 500), jpeg));

    // Never upscaled: a small PNG stays its size.
    let uri = upload(
        &server,
        &alice,
        encode(&gradient(40, 20), ImageFormat::Png),
        "image/png",
        None,
    )
    .await;
    let (_, size, _) = thumbnail_of(&server, &alice, &uri, "width=320&height=240&method=scale").await;
    assert_eq!(size, (40, 20));
    let (_, size, _) = thumbnail_of(&server, &alice, &uri, "width=96&height=96&method=crop").await;
    assert_eq!(size, (20, 20));

    // animated=true keeps a GIF moving, resized frame by frame.
    let uri = upload(&server, &alice, animated_gif(400, 300), "image/gif", None).await;
    let (ct, size, bytes) = thumbnail_of(&server, &alice, &uri, "width=96&height=96&method=crop&animated=true").await;
    assert_eq!((ct.as_str(), size), ("image/gif", (96, 96)));
    use image::AnimationDecoder;
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(bytes))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 2);
}

/// A PNG that claims `width`×`height` pixels but carries no image data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

#[tokio::test]
async fn broken_and_oversized_images_get_clean_errors() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let query = "width=96&height=96&method=crop";

    let not_an_image = upload(&server, &alice, b"just text, not pixels".to_vec(), "image/png", None).await;
    assert_error(
        &json_of(thumbnail(&server, &alice, &not_an_image, query).await).await,
        400,
        "M_UNKNOWN",
    );
    let valid = encode(&gradient(300, 300), ImageFormat::Png);
    let truncated = upload(&server, &alice, valid[..valid.len() / 2].to_vec(), "image/png", None).await;
    assert_error(
        &json_of(thumbnail(&server, &alice, &truncated, query).await).await,
        400,
        "M_UNKNOWN",
    );
    // A decompression bomb: 100,000 × 100,000 pixels in 33 bytes.
    let bomb = upload(&server, &alice, png_claiming(100_000, 100_000), "image/png", None).await;
    assert_error(
        &json_of(thumbnail(&server, &alice, &bomb, query).await).await,
        413,
        "M_TOO_LARGE",
    );

    // The originals still download, and the server is fine.
    assert_eq!(download(&server, &alice, &bomb).await.status(), 200);
    assert!(files_under(&server, "thumbnails").is_empty());
    assert!(files_under(&server, "tmp").is_empty());
    let (status, _) = server.whoami(&alice).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn range_requests_return_the_asked_bytes() {
    let server = TestServer::start().await;
    let (_, alice, _) = server.register("alice", "pw").await;
    let audio = noise(10_000, 5);
    let uri = upload(&server, &alice, audio.clone(), "audio/ogg", Some("voice.ogg")).await;
    let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(&uri));

    let full = get(&server, &path, Some(&alice), &[]).await;
    assert_eq!(header(&full, "accept-ranges"), "bytes");
    let etag = header(&full, "etag");
    assert_eq!(full.bytes().await.unwrap().as_ref(), &audio[..]);
    // A cached copy is confirmed without its bytes.
    let resp = get(&server, &path, Some(&alice), &[("If-None-Match", &etag)]).await;
    assert_eq!(resp.status(), 304);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = get(&server, &path, Some(&alice), &[("Range", "bytes=1000-1999")]).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-range"), "bytes 1000-1999/10000");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &audio[1000..2000]);
    let resp = get(&server, &path, Some(&alice), &[("Range", "bytes=-500")]).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &audio[9500..]);
    let resp = get(&server, &path, Some(&alice), &[("Range", "bytes=20000-")]).await;
    assert_eq!(resp.status(), 416);

    // Ranges across the server's read blocks (256 KiB) come back exact.
    let video = noise(700_000, 6);
    let uri = upload(&server, &alice, video.clone(), "video/webm", None).await;
    let path = format!("/_matrix/client/v1/media/download/{}", mxc_path(&uri));
    let resp = get(&server, &path, Some(&alice), &[("Range", "bytes=200000-600000")]).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(header(&resp, "content-length"), "400001");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &video[200_000..=600_000]);
    let resp = get(&server, &path, Some(&alice), &[("Range", "bytes=300000-")]).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &video[300_000..]);
}

/// A one-page web site on `address`: `/` is HTML naming `/img.png`,
/// `/img.png` an image, `/hop` a redirect to `redirect_to`. Serves at
/// most `requests` requests, then stops.
fn web_site(address: &str, redirect_to: String, requests: usize) -> String {
    let listener = TcpListener::bind((address, 0)).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let png = encode(&gradient(64, 48), ImageFormat::Png);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request);
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (head, body): (String, Vec<u8>) = match path.as_str() {
                "/" => (
                    "200 OK\r\nContent-Type: text/html; charset=utf-8".to_owned(),
                    br#"<html><head><title>Fallback</title>
                        <meta property="og:title" content="Family &amp; Friends">
                        <meta property="og:description" content="Photos from the weekend">
                        <meta property="og:image" content="/img.png"></head><body>hi</body></html>"#
                        .to_vec(),
                ),
                "/img.png" => ("200 OK\r\nContent-Type: image/png".to_owned(), png.clone()),
                "/hop" => (format!("302 Found\r\nLocation: {redirect_to}"), Vec::new()),
                _ => ("404 Not Found\r\nContent-Type: text/plain".to_owned(), b"no".to_vec()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    base
}

async fn preview(server: &TestServer, token: &str, url: &str) -> (u16, Value) {
    json_of(
        get(
            server,
            &format!("/_matrix/client/v1/media/preview_url?url={}", enc(url)),
            Some(token),
            &[],
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn url_previews_refuse_non_public_addresses_unless_allowed() {
    let site = web_site("127.0.0.1", "http://127.0.0.1/".to_owned(), 20);

    let off = TestServer::start().await;
    let (_, alice, _) = off.register("alice", "pw").await;
    assert_error(&preview(&off, &alice, &site).await, 403, "M_FORBIDDEN");

    let guarded = TestServer::start_with("url_preview_enabled = true").await;
    let (_, alice, _) = guarded.register("alice", "pw").await;
    let port = site.rsplit(':').next().unwrap();
    for url in [
        site.clone(),
        format!("http://localhost:{port}/"),
        "http://10.0.0.1/".to_owned(),
        "http://[::1]/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let got = preview(&guarded, &alice, &url).await;
        assert_error(&got, 403, "M_FORBIDDEN");
        assert!(got.1["error"].as_str().unwrap().contains("public"), "{url}: {}", got.1);
    }
    assert_error(
        &preview(&guarded, &alice, "file:///etc/passwd").await,
        403,
        "M_FORBIDDEN",
    );

    // Loopback allowed, but only 127.0.0.2: a redirect from there to
    // 127.0.0.1 is refused at the redirect.
    let allowed =
        TestServer::start_with("url_preview_enabled = true\nurl_preview_allowed_ranges = [\"127.0.0.2/32\"]").await;
    let (_, alice, _) = allowed.register("alice", "pw").await;
    let hop_site = web_site("127.0.0.2", format!("{site}/"), 5);
    let got = preview(&allowed, &alice, &format!("{hop_site}/hop")).await;
    assert_error(&got, 403, "M_FORBIDDEN");

    // With loopback allowed, the local page previews, image included.
    let open =
        TestServer::start_with("url_preview_enabled = true\nurl_preview_allowed_ranges = [\"127.0.0.0/8\"]").await;
    let (_, alice, _) = open.register("alice", "pw").await;
    let (status, og) = preview(&open, &alice, &format!("{site}/")).await;
    assert_eq!(status, 200, "{og}");
    assert_eq!(og["og:title"], "Family & Friends");
    assert_eq!(og["og:description"], "Photos from the weekend");
    assert_eq!(og["og:image:type"], "image/png");
    assert_eq!(
        (og["og:image:width"].as_u64(), og["og:image:height"].as_u64()),
        (Some(64), Some(48))
    );
    let image_uri = og["og:image"].as_str().expect("og:image is an mxc URI");
    let image = download(&open, &alice, image_uri).await.bytes().await.unwrap();
    assert_eq!(og["matrix:image:size"].as_u64(), Some(image.len() as u64));
    assert_eq!(image::load_from_memory(&image).unwrap().width(), 64);
    // A second request is answered from the cache.
    assert_eq!(preview(&open, &alice, &format!("{site}/")).await, (200, og.clone()));
}

/// VmRSS or VmHWM of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[tokio::test]
async fn a_100_mib_round_trip_raises_rss_by_less_than_16_mib() {
    const SIZE: usize = 100 * 1024 * 1024;
    const CHUNK: usize = 1024 * 1024;
    let server = TestServer::start_with("max_request_size = 209715200").await;
    let (_, alice, _) = server.register("alice", "pw").await;
    // Warm up every path once, so first-use allocations are not counted.
    let warm = upload(&server, &alice, noise(CHUNK, 9), "application/octet-stream", None).await;
    download(&server, &alice, &warm).await.bytes().await.unwrap();

    let pid = server.pid();
    let baseline = memory_kib(pid, "VmRSS:");
    // Resets the peak (VmHWM) to the current RSS.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    let mut expected = Sha256::new();
    let chunks: Vec<Vec<u8>> = (0..SIZE / CHUNK).map(|i| noise(CHUNK, i as u64 + 11)).collect();
    for chunk in &chunks {
        expected.update(chunk);
    }
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    let resp = server
        .client
        .post(server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice)
        .header("Content-Length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 200, "{body}");
    let uri = body["content_uri"].as_str().unwrap();

    let mut resp = download(&server, &alice, uri).await;
    assert_eq!(resp.status(), 200);
    let mut got = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        len += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(len, SIZE);
    assert_eq!(got.finalize(), expected.finalize());

    let peak = memory_kib(pid, "VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("100 MiB round trip: RSS {baseline} KiB before, peak {peak} KiB (+{growth_mib:.1} MiB)");
    assert!(growth_mib < 16.0, "RSS grew by {growth_mib:.1} MiB");
}
