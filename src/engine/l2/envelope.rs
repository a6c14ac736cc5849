//! The L2 envelope: how an entry is stored in Redis. Versioned, self-describing, and decoded
//! as hostile input (anything can be written to Redis by anyone): every length is checked
//! before it is used, and a decode error is a miss, never a panic.
//!
//! Format v1, integers little-endian:
//! ```text
//! 0   "TC"            magic
//! 2   u8 version      1
//! 3   u8 flags        bit 0: payload is zstd-compressed; other bits must be 0
//! 4   u64 cached_at   Unix ms
//! 12  u64 expires_at  Unix ms
//! 20  u32 value_len   length of the value once decompressed
//! 24  u32 n_tags,  then n_tags  × (u32 len, UTF-8 bytes)
//!     u32 n_deps,  then n_deps  × (u32 len, UTF-8 bytes)
//!     payload      the rest: value bytes, or one zstd frame of them
//! ```

use bytes::Bytes;

use crate::config::Compression;

const MAGIC: &[u8; 2] = b"TC";
pub const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const HEADER_LEN: usize = 24;
/// Upper bound on names in one envelope, far above any configured limit: a hostile count
/// cannot make the decoder allocate much.
const MAX_NAMES: usize = 4096;

/// An entry as stored in L2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub value: Bytes,
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
}

/// An encoded envelope, with what compression did to it (for `compression_ratio`).
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// `(original, stored)` value bytes when the value was stored compressed.
    pub compressed: Option<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a tiercache envelope")]
    BadMagic,
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown envelope flags {0:#x}")]
    UnknownFlags(u8),
    #[error("envelope truncated")]
    Truncated,
    #[error("envelope field is not UTF-8")]
    NotUtf8,
    #[error("envelope has too many names")]
    TooManyNames,
    #[error("envelope value does not match its length")]
    BadValue,
}

impl Envelope {
    pub fn encode(&self, compression: Compression) -> Encoded {
        let mut compressed = None;
        let mut flags = 0;
        let mut payload: &[u8] = &self.value;
        let zstd_bytes;
        if let Some(level) = compression.zstd_level {
            if self.value.len() > compression.threshold_bytes {
                if let Ok(bytes) = zstd::bulk::compress(&self.value, level) {
                    if bytes.len() < self.value.len() {
                        zstd_bytes = bytes;
                        payload = &zstd_bytes;
                        flags |= FLAG_ZSTD;
                        compressed = Some((self.value.len(), payload.len()));
                    }
                }
            }
        }
        let names_len: usize = self.tags.iter().chain(&self.depends_on).map(|name| 4 + name.len()).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + 8 + names_len + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(flags);
        out.extend_from_slice(&self.cached_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        for names in [&self.tags, &self.depends_on] {
            out.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for name in names {
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.extend_from_slice(payload);
        Encoded { bytes: out, compressed }
    }

    /// Decodes an envelope whose value may be at most `max_value_bytes` long.
    ///
    /// # Errors
    /// A [`DecodeError`] for anything that is not a well-formed v1 envelope.
    pub fn decode(bytes: &[u8], max_value_bytes: usize) -> Result<Envelope, DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(2)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = reader.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let flags = reader.u8()?;
        if flags & !FLAG_ZSTD != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let cached_at_ms = reader.u64()?;
        let expires_at_ms = reader.u64()?;
        let value_len = reader.u32()? as usize;
        if value_len > max_value_bytes {
            return Err(DecodeError::BadValue);
        }
        let tags = reader.names()?;
        let depends_on = reader.names()?;
        let payload = reader.rest();
        let value = if flags & FLAG_ZSTD != 0 {
            let value = zstd::bulk::decompress(payload, value_len).map_err(|_| DecodeError::BadValue)?;
            Bytes::from(value)
        } else {
            Bytes::copy_from_slice(payload)
        };
        if value.len() != value_len {
            return Err(DecodeError::BadValue);
        }
        Ok(Envelope { value, cached_at_ms, expires_at_ms, tags, depends_on })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(len).ok_or(DecodeError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes: [u8; 4] = self.take(4)?.try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn names(&mut self) -> Result<Vec<String>, DecodeError> {
        let count = self.u32()? as usize;
        if count > MAX_NAMES {
            return Err(DecodeError::TooManyNames);
        }
        let mut names = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let len = self.u32()? as usize;
            let raw = self.take(len)?;
            names.push(std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8)?.to_string());
        }
        Ok(names)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ZSTD: Compression = Compression { zstd_level: Some(3), threshold_bytes: 1024 };
    const NONE: Compression = Compression { zstd_level: None, threshold_bytes: 1024 };

    fn envelope(value: Vec<u8>) -> Envelope {
        Envelope {
            value: Bytes::from(value),
            cached_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_060_000,
            tags: vec!["users".into(), "t:é".into()],
            depends_on: vec!["org:1".into()],
        }
    }

    #[test]
    fn round_trip_small_values_stay_plain() {
        let original = envelope(b"{\"a\":1}".to_vec());
        let encoded = original.encode(ZSTD);
        assert!(encoded.compressed.is_none());
        assert_eq!(Envelope::decode(&encoded.bytes, 1 << 20).unwrap(), original);
    }

    #[test]
    fn large_compressible_values_are_compressed_and_round_trip() {
        let original = envelope(format!("\"{}\"", "abc".repeat(2000)).into_bytes());
        let encoded = original.encode(ZSTD);
        let (before, after) = encoded.compressed.unwrap();
        assert_eq!(before, original.value.len());
        assert!(after < before / 10);
        assert_eq!(Envelope::decode(&encoded.bytes, 1 << 20).unwrap(), original);
        assert!(original.encode(NONE).compressed.is_none(), "algorithm none never compresses");
    }

    #[test]
    fn incompressible_values_are_kept_plain() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let encoded = envelope(noise).encode(ZSTD);
        assert!(encoded.compressed.is_none());
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let mut bytes = envelope(b"1".to_vec()).encode(NONE).bytes;
        assert_eq!(Envelope::decode(b"", 100), Err(DecodeError::Truncated));
        assert_eq!(Envelope::decode(b"{\"json\":1}", 100), Err(DecodeError::BadMagic));
        bytes[2] = 2;
        assert_eq!(Envelope::decode(&bytes, 100), Err(DecodeError::UnsupportedVersion(2)));
        bytes[2] = 1;
        bytes[3] = 0x80;
        assert_eq!(Envelope::decode(&bytes, 100), Err(DecodeError::UnknownFlags(0x80)));
        bytes[3] = 0;
        assert_eq!(Envelope::decode(&bytes[..bytes.len() - 1], 100), Err(DecodeError::BadValue));
    }

    #[test]
    fn a_value_over_the_limit_is_refused() {
        let bytes = envelope(vec![b'1'; 50]).encode(NONE).bytes;
        assert_eq!(Envelope::decode(&bytes, 49), Err(DecodeError::BadValue));
    }

    /// A decoded envelope is within the limits the decoder was given.
    fn clean(result: Result<Envelope, DecodeError>, max_value_bytes: usize) -> Result<(), TestCaseError> {
        if let Ok(envelope) = result {
            prop_assert!(envelope.value.len() <= max_value_bytes);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(2000))]

        #[test]
        fn fuzz_envelope_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            clean(Envelope::decode(&bytes, 1 << 20), 1 << 20)?;
            clean(Envelope::decode(&bytes, 16), 16)?;
        }

        #[test]
        fn fuzz_envelope_corrupted(
            value in prop::collection::vec(any::<u8>(), 0..3000),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = envelope(value).encode(ZSTD).bytes;
            for (idx, byte) in flips {
                let at = idx.index(bytes.len());
                bytes[at] ^= byte;
            }
            clean(Envelope::decode(&bytes, 1 << 20), 1 << 20)?;
            clean(Envelope::decode(&bytes[..cut.index(bytes.len())], 1 << 20), 1 << 20)?;
            clean(Envelope::decode(&bytes, 100), 100)?;
        }

        #[test]
        fn every_envelope_round_trips(
            value in prop::collection::vec(any::<u8>(), 0..3000),
            tags in prop::collection::vec("[a-z]{1,8}", 0..4),
            deps in prop::collection::vec("[a-z:]{1,8}", 0..4),
            cached_at_ms in any::<u64>(),
            expires_at_ms in any::<u64>(),
        ) {
            let original = Envelope { value: Bytes::from(value), cached_at_ms, expires_at_ms, tags, depends_on: deps };
            prop_assert_eq!(Envelope::decode(&original.encode(ZSTD).bytes, 1 << 20).unwrap(), original);
        }
    }
}
