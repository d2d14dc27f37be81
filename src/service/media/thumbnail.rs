//! Thumbnails: one per size class and method, made on first request with
//! the `image` crate and kept on disk. Decoding is bounded (dimensions and
//! allocation) so a hostile file costs an error, not the server's memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{AnimationDecoder, DynamicImage, Frame, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::{io_error, random_string, ServedFile};
use crate::service::{ServiceError, ServiceResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Crop,
    Scale,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ThumbnailRequest {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    pub animated: bool,
}

impl ThumbnailRequest {
    /// A request from an endpoint's parameters: `method` is `crop` or
    /// `scale` (the default), sides at least 1.
    pub fn new(width: u64, height: u64, method: Option<&str>, animated: bool) -> ServiceResult<Self> {
        let method = match method {
            None | Some("scale") => Method::Scale,
            Some("crop") => Method::Crop,
            Some(other) => {
                return Err(ServiceError::InvalidParam(format!(
                    "method must be crop or scale, not {other}"
                )))
            }
        };
        if width == 0 || height == 0 {
            return Err(ServiceError::InvalidParam(
                "width and height must be at least 1".to_owned(),
            ));
        }
        // Beyond any size class: only the original is that large.
        let side = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Self {
            width: side(width),
            height: side(height),
            method,
            animated,
        })
    }
}

/// The spec's recommended sizes; any request maps to the smallest that
/// covers it, so each original has at most ten thumbnails.
const SIZE_CLASSES: [(u32, u32); 5] = [(32, 32), (96, 96), (320, 240), (640, 480), (800, 600)];
/// Images larger than this are not decoded (a 24-megapixel photo fits).
const MAX_PIXELS: u64 = 25_000_000;
const MAX_SIDE: u32 = 16_384;
/// What a decoder may allocate (a 25-megapixel RGBA image is 100 MB).
const MAX_DECODE_ALLOC: u64 = 128 * 1024 * 1024;
/// Frames of an animated thumbnail; the rest of a longer GIF is cut.
const MAX_FRAMES: usize = 200;
const JPEG_QUALITY: u8 = 85;

/// The file to serve for `request`: a cached or new thumbnail under
/// `dir`, or the original when it is already no larger than asked.
pub fn serve(
    original: &ServedFile,
    dir: &Path,
    tmp_dir: &Path,
    request: ThumbnailRequest,
) -> ServiceResult<ServedFile> {
    let format = image_format(&original.path)?;
    let (width, height) = open_reader(&original.path, format)?
        .into_dimensions()
        .map_err(decode_error)?;
    if u64::from(width) * u64::from(height) > MAX_PIXELS || width > MAX_SIDE || height > MAX_SIDE {
        return Err(ServiceError::TooLarge(format!(
            "this {width}x{height} image is too large to thumbnail"
        )));
    }
    let animated = request.animated && format == ImageFormat::Gif;
    // A format that can hold an animation is re-encoded unless one was
    // asked for: the spec forbids animated thumbnails otherwise.
    let may_animate = matches!(format, ImageFormat::Gif | ImageFormat::Png | ImageFormat::WebP);
    let fits_request = width <= request.width && height <= request.height;
    if fits_request && (animated || !may_animate) {
        return Ok(original.clone());
    }
    // No class is large enough: the original is the only answer that is
    // not smaller than asked.
    let class = SIZE_CLASSES
        .iter()
        .copied()
        .find(|&(w, h)| w >= request.width && h >= request.height);
    let (box_w, box_h) = match class {
        Some(class) => class,
        None if animated || !may_animate => return Ok(original.clone()),
        None => (width, height),
    };
    let (extension, content_type) = match (animated, format) {
        (true, _) => ("gif", "image/gif"),
        (false, ImageFormat::Jpeg) => ("jpg", "image/jpeg"),
        (false, _) => ("png", "image/png"),
    };
    let name = format!(
        "{box_w}x{box_h}-{}{}.{extension}",
        request.method.name(),
        if animated { "-animated" } else { "" }
    );
    let path = dir.join(name);
    let served = ServedFile {
        path: path.clone(),
        content_type: content_type.to_owned(),
        filename: Some(format!("thumbnail.{extension}")),
    };
    if path.exists() {
        return Ok(served);
    }

    let tmp = tmp_dir.join(random_string(24));
    let written = if animated {
        write_animated(&original.path, &tmp, request.method, (box_w, box_h))
    } else {
        write_static(&original.path, format, &tmp, request.method, (box_w, box_h))
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error("creating a thumbnail directory", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error("storing a thumbnail", e))?;
    Ok(served)
}

/// The format from the file's first bytes, not the uploader's claim.
fn image_format(path: &Path) -> ServiceResult<ImageFormat> {
    let reader = ImageReader::open(path)
        .map_err(|e| io_error("opening media", e))?
        .with_guessed_format()
        .map_err(|e| io_error("reading media", e))?;
    match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)) => Ok(f),
        _ => Err(ServiceError::BadRequest(
            "this media is not an image the server can thumbnail (JPEG, PNG, GIF or WebP)".to_owned(),
        )),
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}

fn open_reader(path: &Path, format: ImageFormat) -> ServiceResult<ImageReader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| io_error("opening media", e))?;
    let mut reader = ImageReader::with_format(BufReader::new(file), format);
    reader.limits(limits());
    Ok(reader)
}

fn decode_error(e: image::ImageError) -> ServiceError {
    match e {
        image::ImageError::Limits(_) => ServiceError::TooLarge("this image is too large to thumbnail".to_owned()),
        // A file that ends early or holds garbage is the upload's fault.
        image::ImageError::IoError(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            ServiceError::BadRequest(format!("this image cannot be decoded: {e}"))
        }
        image::ImageError::IoError(e) => io_error("reading media", e),
        other => ServiceError::BadRequest(format!("this image cannot be decoded: {other}")),
    }
}

fn encode_error(e: image::ImageError) -> ServiceError {
    ServiceError::Internal(format!("encoding a thumbnail: {e}"))
}

fn write_static(
    source: &Path,
    format: ImageFormat,
    target: &Path,
    method: Method,
    bounds: (u32, u32),
) -> ServiceResult<()> {
    let image = open_reader(source, format)?.decode().map_err(decode_error)?;
    let thumb = fit(image, method, bounds);
    let out = File::create(target).map_err(|e| io_error("creating a thumbnail", e))?;
    let mut out = BufWriter::new(out);
    if format == ImageFormat::Jpeg {
        let rgb = DynamicImage::ImageRgb8(thumb.to_rgb8());
        rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))
            .map_err(encode_error)?;
    } else {
        thumb
            .write_with_encoder(PngEncoder::new(&mut out))
            .map_err(encode_error)?;
    }
    out.flush().map_err(|e| io_error("writing a thumbnail", e))
}

fn write_animated(source: &Path, target: &Path, method: Method, bounds: (u32, u32)) -> ServiceResult<()> {
    let file = File::open(source).map_err(|e| io_error("opening media", e))?;
    let mut decoder = GifDecoder::new(BufReader::new(file)).map_err(decode_error)?;
    decoder.set_limits(limits()).map_err(decode_error)?;
    let out = File::create(target).map_err(|e| io_error("creating a thumbnail", e))?;
    let mut encoder = GifEncoder::new(BufWriter::new(out));
    encoder.set_repeat(Repeat::Infinite).map_err(encode_error)?;
    // One frame at a time: memory stays at one canvas, whatever the length.
    for frame in decoder.into_frames().take(MAX_FRAMES) {
        let frame = frame.map_err(decode_error)?;
        let delay = frame.delay();
        let resized = fit(DynamicImage::ImageRgba8(frame.into_buffer()), method, bounds);
        encoder
            .encode_frame(Frame::from_parts(resized.to_rgba8(), 0, 0, delay))
            .map_err(encode_error)?;
    }
    Ok(())
}

/// `scale`: the whole image within the bounds, aspect kept. `crop`: the
/// bounds' aspect, cut from the centre, at most the bounds' size. Never
/// larger than the original.
fn fit(image: DynamicImage, method: Method, (box_w, box_h): (u32, u32)) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    match method {
        Method::Scale => {
            if w <= box_w && h <= box_h {
                image
            } else {
                image.resize(box_w, box_h, FilterType::Triangle)
            }
        }
        Method::Crop => {
            let (crop_w, crop_h) = crop_size((w, h), (box_w, box_h));
            let cropped = image.crop_imm((w - crop_w) / 2, (h - crop_h) / 2, crop_w, crop_h);
            if crop_w > box_w {
                cropped.resize_exact(box_w, box_h, FilterType::Triangle)
            } else {
                cropped
            }
        }
    }
}

/// The largest centred region of a `w`×`h` image with the box's aspect ratio.
fn crop_size((w, h): (u32, u32), (box_w, box_h): (u32, u32)) -> (u32, u32) {
    // Compare w/h with box_w/box_h without floating point.
    if u64::from(w) * u64::from(box_h) > u64::from(h) * u64::from(box_w) {
        let crop_w = (u64::from(h) * u64::from(box_w) / u64::from(box_h)).max(1) as u32;
        (crop_w.min(w), h)
    } else {
        let crop_h = (u64::from(w) * u64::from(box_h) / u64::from(box_w)).max(1) as u32;
        (w, crop_h.min(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_keeps_the_box_aspect() {
        assert_eq!(crop_size((1000, 500), (96, 96)), (500, 500));
        assert_eq!(crop_size((500, 1000), (320, 240)), (500, 375));
        assert_eq!(crop_size((40, 20), (96, 96)), (20, 20));
    }

    #[test]
    fn fit_never_upscales() {
        let small = DynamicImage::new_rgb8(50, 20);
        let scaled = fit(small.clone(), Method::Scale, (320, 240));
        assert_eq!((scaled.width(), scaled.height()), (50, 20));
        let cropped = fit(small, Method::Crop, (96, 96));
        assert_eq!((cropped.width(), cropped.height()), (20, 20));
        let big = DynamicImage::new_rgb8(1000, 500);
        let scaled = fit(big.clone(), Method::Scale, (320, 240));
        assert_eq!((scaled.width(), scaled.height()), (320, 160));
        let cropped = fit(big, Method::Crop, (96, 96));
        assert_eq!((cropped.width(), cropped.height()), (96, 96));
    }
}
