//! Our own extractors: every rejection becomes an `ApiError` in the JSON error shape, so a
//! client never sees axum's plain-text rejections.
//!
//! A body is read only after every check that can refuse it without reading it (Content-Type,
//! Content-Encoding, a `Content-Length` past the limit): hyper sends `100 Continue` when the
//! body is first read, so a client that asked for it uploads nothing it would be refused for.

use std::io;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use futures_util::TryStreamExt;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader};

use super::error::ApiError;
use super::{path, AppState};
use crate::engine::Key;

/// The path prefix of the key routes.
pub const KEY_PREFIX: &str = "/api/cache/";

/// Content codings stacked on one body past which it is refused: each is a full decompression
/// pass, and no client needs more than one.
const MAX_CODINGS: usize = 2;

/// The key of `/api/cache/{key}`: the rest of the path, percent-decoded (strictly: a malformed
/// escape is `invalid_key`). Slashes are kept as they are (`/api/cache//a` is the key `/a`).
pub struct KeyPath(pub Key);

impl FromRequestParts<AppState> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.path().strip_prefix(KEY_PREFIX).unwrap_or_default();
        let decoded = path::decode(raw).map_err(|path::MalformedEscape| {
            ApiError::bad_request("invalid_key", "invalid key: a % must be followed by two hex digits")
        })?;
        let decoded = std::str::from_utf8(&decoded)
            .map_err(|_| ApiError::bad_request("invalid_key", "invalid key: not valid UTF-8 once percent-decoded"))?;
        Ok(KeyPath(state.cache.parse_key(decoded)?))
    }
}

/// A JSON body: 415 when a Content-Type is present and is not JSON, or for a content coding
/// other than `gzip`, `zstd` and `br`; 413 past `server.max_body_bytes` (on the wire and once
/// decompressed); 400 for malformed JSON or a wrong shape.
pub struct JsonBody<T>(pub T);

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            if !is_json(content_type.to_str().unwrap_or_default()) {
                return Err(ApiError::unsupported_media_type());
            }
        }
        let bytes = read_body(req, state.server.max_body_bytes).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A content coding this service decodes (SPEC §21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Zstd,
    Brotli,
}

/// The body of `request`, decoded from its `Content-Encoding`, at most `limit` bytes both as
/// sent and as decoded. The decoded limit is checked while decoding, so a compression bomb
/// costs no more memory than `limit` (and the decoders' small buffers).
///
/// # Errors
/// 415 `unsupported_content_encoding`, 413 `payload_too_large` (from `Content-Length` before
/// anything is read, else as soon as the limit is passed), 400 `invalid_body` when the body
/// cannot be read or decoded.
pub async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let codings = codings(request.headers())?;
    let too_large = || ApiError::payload_too_large("request body is larger than server.max_body_bytes");
    if content_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let body = request.into_body();
    if codings.is_empty() {
        return match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => Ok(bytes),
            Err(err) if is_length_limit(&err) => Err(too_large()),
            Err(_) => Err(ApiError::bad_request("invalid_body", "request body could not be read")),
        };
    }
    let mut wire = wire_reader(body, limit);
    let read = read_bounded(decoder(&mut wire, &codings), limit).await;
    match read {
        Ok(Some(decoded)) => Ok(Bytes::from(decoded)),
        Ok(None) => {
            // The rest of the body as sent (at most `limit`, within the request timeout) is
            // read and dropped without decoding it, so the client gets the 413 rather than a
            // reset while it still sends.
            let _ = tokio::io::copy(&mut wire, &mut tokio::io::sink()).await;
            Err(too_large())
        }
        Err(err) if err.get_ref().is_some_and(|inner| inner.is::<WireLimit>()) => Err(too_large()),
        Err(err) if err.kind() == io::ErrorKind::InvalidData || err.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ApiError::bad_request("invalid_body", "request body could not be decompressed"))
        }
        Err(_) => Err(ApiError::bad_request("invalid_body", "request body could not be read")),
    }
}

/// Everything `reader` yields, or `None` as soon as it passes `limit` bytes. The buffer never
/// holds more than `limit` bytes of capacity (where `read_to_end` could double past it).
async fn read_bounded(mut reader: impl AsyncRead + Unpin, limit: usize) -> io::Result<Option<Vec<u8>>> {
    const CHUNK: usize = 16 * 1024;
    let mut chunk = vec![0u8; CHUNK];
    let mut out = Vec::new();
    loop {
        let read = reader.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Some(out));
        }
        let len = out.len() + read;
        if len > limit {
            return Ok(None);
        }
        if len > out.capacity() {
            let capacity = (out.capacity() * 2).max(len).min(limit);
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&chunk[..read]);
    }
}

/// The codings of `Content-Encoding` in the order they were applied (`identity` dropped).
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, ApiError> {
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| ApiError::unsupported_content_encoding("a non-ASCII coding"))?;
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let coding = match name.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "zstd" => Coding::Zstd,
                "br" => Coding::Brotli,
                _ => return Err(ApiError::unsupported_content_encoding(name)),
            };
            codings.push(coding);
        }
    }
    if codings.len() > MAX_CODINGS {
        return Err(ApiError::unsupported_content_encoding("more than two stacked codings"));
    }
    Ok(codings)
}

fn is_length_limit(err: &axum::Error) -> bool {
    std::error::Error::source(err).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The wire bytes of a compressed body passed `server.max_body_bytes`.
#[derive(Debug)]
struct WireLimit;

impl std::fmt::Display for WireLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body is larger than the limit")
    }
}

impl std::error::Error for WireLimit {}

/// The bytes of `body` as sent, failing with [`WireLimit`] past `limit`.
fn wire_reader(body: Body, limit: usize) -> impl AsyncBufRead + Send + Unpin {
    let mut wire_bytes = 0usize;
    let stream = body.into_data_stream().map_err(io::Error::other).and_then(move |chunk| {
        wire_bytes += chunk.len();
        let checked = if wire_bytes > limit { Err(io::Error::other(WireLimit)) } else { Ok(chunk) };
        std::future::ready(checked)
    });
    tokio_util::io::StreamReader::new(stream)
}

/// The decoded bytes of `wire`: the decoders, the last applied coding first.
fn decoder<'a>(
    wire: &'a mut (impl AsyncBufRead + Send + Unpin),
    codings: &[Coding],
) -> Pin<Box<dyn AsyncBufRead + Send + 'a>> {
    let mut reader: Pin<Box<dyn AsyncBufRead + Send + 'a>> = Box::pin(wire);
    // Every decoder reads to the end of its input: concatenated gzip members and zstd frames
    // are one body (RFC 1952, RFC 8878), and bytes after the last one are an error, not
    // silently dropped.
    for coding in codings.iter().rev() {
        reader = match coding {
            Coding::Gzip => {
                let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(BufReader::new(decoder))
            }
            // RFC 9659's 8 MiB window, not the library's 128 MiB: the window is memory a body
            // can make the decoder allocate whatever the limit.
            Coding::Zstd => {
                let mut decoder = async_compression::tokio::bufread::ZstdDecoder::new_for_http(reader);
                decoder.multiple_members(true);
                Box::pin(BufReader::new(decoder))
            }
            Coding::Brotli => {
                let mut decoder = async_compression::tokio::bufread::BrotliDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(BufReader::new(decoder))
            }
        };
    }
    reader
}

/// Parses a JSON body, telling malformed JSON apart from a well-formed body of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => ApiError::bad_request("invalid_body", format!("invalid body: {err}")),
        _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {err}")),
    })
}

/// `application/json`, `application/*+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
