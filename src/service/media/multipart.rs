//! `multipart/mixed` bodies (RFC 2046 §5.1) as the federation media
//! endpoints use them: a JSON metadata part, then the content or a
//! `Location`. Both directions live here: [`parse`] reads an answer from
//! another server (whole, by index, never slicing past its end, so a
//! hostile answer is an error, not a panic), [`Framing`] writes ours
//! around a streamed file.

use super::random_string;

/// At most this many parts are read (the endpoints send two).
const MAX_PARTS: usize = 8;
/// A part's header section beyond this is refused.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// One part: its headers (names as sent) and its bytes.
#[derive(Debug)]
pub struct Part<'a> {
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Part<'_> {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The boundary of a `multipart/mixed` `Content-Type`.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mime: mime::Mime = content_type
        .parse()
        .map_err(|e| format!("unreadable Content-Type {content_type:?}: {e}"))?;
    if mime.essence_str() != "multipart/mixed" {
        return Err(format!("expected multipart/mixed, got {}", mime.essence_str()));
    }
    let boundary = mime
        .get_param(mime::BOUNDARY)
        .ok_or_else(|| "multipart/mixed without a boundary".to_owned())?
        .as_str()
        .to_owned();
    // RFC 2046: 1 to 70 characters of a restricted set.
    let allowed = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
    if boundary.is_empty() || boundary.len() > 70 || !boundary.chars().all(allowed) {
        return Err(format!("invalid multipart boundary {boundary:?}"));
    }
    Ok(boundary)
}

/// The parts of `body` between its `boundary` delimiters, up to the close
/// delimiter (which must be there: a cut-off body is an error).
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut line_delimiter = b"\r\n".to_vec();
    line_delimiter.extend_from_slice(&delimiter);

    // The first delimiter opens the body, or ends a preamble.
    let mut at = if body.starts_with(&delimiter) {
        delimiter.len()
    } else {
        find(body, &line_delimiter, 0).ok_or("no multipart delimiter")? + line_delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(at..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        if parts.len() == MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} parts"));
        }
        // Transport padding, then the line break that starts the part.
        let line_end = find(body, b"\r\n", at).ok_or("a delimiter without its line break")?;
        if !body[at..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err("text after a delimiter".to_owned());
        }
        let start = line_end + 2;
        let end = find(body, &line_delimiter, start).ok_or("a part without its closing delimiter")?;
        parts.push(part(&body[start..end])?);
        at = end + line_delimiter.len();
    }
}

/// A part's headers, up to the empty line, and its body after it.
fn part(bytes: &[u8]) -> Result<Part<'_>, String> {
    let (head, body) = if bytes.starts_with(b"\r\n") {
        (&[][..], &bytes[2..])
    } else {
        let end = find(bytes, b"\r\n\r\n", 0).ok_or("a part without the empty line after its headers")?;
        (&bytes[..end], &bytes[end + 4..])
    };
    if head.len() > MAX_HEADER_BYTES {
        return Err("a part's headers are too long".to_owned());
    }
    let head = std::str::from_utf8(head).map_err(|_| "a part's headers are not UTF-8")?;
    let mut headers = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("not a header: {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(Part { headers, body })
}

/// Where `needle` first occurs in `haystack` from `from` on.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    loop {
        let start = at + haystack.get(at..)?.iter().position(|&b| b == first)?;
        if haystack.get(start..start + needle.len()) == Some(needle) {
            return Some(start);
        }
        at = start + 1;
    }
}

/// What goes around the content in our answers: the `Content-Type` of the
/// whole, and the bytes before and after the file.
pub struct Framing {
    pub content_type: String,
    pub head: String,
    pub tail: String,
}

impl Framing {
    /// The empty metadata part and the content part's headers, which must
    /// be header-safe (no line breaks).
    pub fn new(content_type: &str, content_disposition: &str) -> Self {
        // Alphanumeric and long: it cannot occur by chance in the content.
        let boundary = random_string(32);
        Self {
            content_type: format!("multipart/mixed; boundary={boundary}"),
            head: format!(
                "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
                 Content-Type: {content_type}\r\nContent-Disposition: {content_disposition}\r\n\r\n"
            ),
            tail: format!("\r\n--{boundary}--\r\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_framing_reads_back() {
        let framing = Framing::new("image/png", "inline; filename=\"a.png\"");
        let content = b"\x89PNG\r\n--not the boundary\r\n\r\n";
        let body = [framing.head.as_bytes(), content, framing.tail.as_bytes()].concat();
        let parts = parse(&body, &boundary(&framing.content_type).unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].header("content-type"), Some("application/json"));
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(parts[1].header("Content-Type"), Some("image/png"));
        assert_eq!(
            parts[1].header("content-disposition"),
            Some("inline; filename=\"a.png\"")
        );
        assert_eq!(parts[1].body, content);
    }

    #[test]
    fn a_preamble_quoted_boundary_and_location_part_are_read() {
        let content_type = "multipart/mixed; boundary=\"b 1\"";
        let body = b"preamble\r\n--b 1\r\nContent-Type: application/json\r\n\r\n{}\r\n--b 1  \r\n\
                     Location: https://cdn.example/x\r\n\r\n\r\n--b 1--";
        let parts = parse(body, &boundary(content_type).unwrap()).unwrap();
        assert_eq!(parts[1].header("location"), Some("https://cdn.example/x"));
        assert!(parts[1].body.is_empty());
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        for content_type in [
            "text/plain",
            "multipart/mixed",
            "multipart/mixed; boundary=\"\"",
            "not a type",
        ] {
            assert!(boundary(content_type).is_err(), "{content_type}");
        }
        let bad: &[&[u8]] = &[
            b"",
            b"--B",
            b"--B\r\n--B",
            b"--B\r\n\r\n--B",
            b"--Bx\r\n\r\n{}\r\n--B--",
            b"--B\r\nContent-Type: application/json\r\n\r\n{}",
            b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\nContent-Type: text/plain\r\n\r\ncut off",
            b"--B\r\nno colon\r\n\r\n{}\r\n--B--",
            b"--B\r\n\xff: x\r\n\r\n{}\r\n--B--",
            b"\r\n--B",
            b"\r\n--B\r",
        ];
        for body in bad {
            assert!(parse(body, "B").is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let many = "--B\r\n\r\nx\r\n".repeat(MAX_PARTS + 1) + "--B--";
        assert!(parse(many.as_bytes(), "B").is_err());
        // Empty parts and a part without headers are fine.
        let parts = parse(b"--B\r\n\r\n\r\n--B\r\n\r\nabc\r\n--B--", "B").unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].headers.is_empty() && parts[0].body.is_empty());
        assert_eq!(parts[1].body, b"abc");
    }
}
