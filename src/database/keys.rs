//! Typed key codecs: the only way table keys are built and read.
//!
//! Encoding rules, chosen so that the byte order of encoded keys equals the
//! natural order of the typed values (RocksDB iterates in byte order):
//! - `u64`: 8 bytes big-endian.
//! - strings: UTF-8 bytes with every `0x00` escaped as `0x00 0xFF`, followed
//!   by the terminator `0x00 0x00`. Escaping keeps "a" < "ab" and lets a
//!   string sit anywhere in a tuple; the terminator makes a tuple prefix a
//!   valid scan prefix (`("@a:x",)` never matches `("@a:xy", ..)`).
//! - fixed byte arrays (`[u8; N]`): the raw bytes.
//! - tuples: their parts one after another.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key ended early")]
    Truncated,
    #[error("key has {0} trailing bytes")]
    Trailing(usize),
    #[error("key string is not UTF-8")]
    NotUtf8,
    #[error("invalid escape in key string")]
    BadEscape,
}

/// A value that can be written into a key.
pub trait KeyEncode {
    fn encode_into(&self, out: &mut Vec<u8>);
}

/// A value that can be read back out of a key.
pub trait KeyDecode: Sized {
    fn decode_from(input: &mut &[u8]) -> Result<Self, KeyError>;
}

/// Encodes a whole key.
pub fn encode<K: KeyEncode + ?Sized>(key: &K) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    key.encode_into(&mut out);
    out
}

/// Decodes a whole key; every byte must be consumed.
pub fn decode<K: KeyDecode>(mut bytes: &[u8]) -> Result<K, KeyError> {
    let key = K::decode_from(&mut bytes)?;
    if bytes.is_empty() {
        Ok(key)
    } else {
        Err(KeyError::Trailing(bytes.len()))
    }
}

impl KeyEncode for u64 {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

impl KeyDecode for u64 {
    fn decode_from(input: &mut &[u8]) -> Result<Self, KeyError> {
        let (head, rest) = input.split_first_chunk::<8>().ok_or(KeyError::Truncated)?;
        *input = rest;
        Ok(u64::from_be_bytes(*head))
    }
}

impl<const N: usize> KeyEncode for [u8; N] {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
}

impl<const N: usize> KeyDecode for [u8; N] {
    fn decode_from(input: &mut &[u8]) -> Result<Self, KeyError> {
        let (head, rest) = input.split_first_chunk::<N>().ok_or(KeyError::Truncated)?;
        *input = rest;
        Ok(*head)
    }
}

impl KeyEncode for str {
    fn encode_into(&self, out: &mut Vec<u8>) {
        for &b in self.as_bytes() {
            out.push(b);
            if b == 0 {
                out.push(0xFF);
            }
        }
        out.extend_from_slice(&[0, 0]);
    }
}

impl KeyEncode for String {
    fn encode_into(&self, out: &mut Vec<u8>) {
        self.as_str().encode_into(out);
    }
}

impl<T: KeyEncode + ?Sized> KeyEncode for &T {
    fn encode_into(&self, out: &mut Vec<u8>) {
        (**self).encode_into(out);
    }
}

impl KeyDecode for String {
    fn decode_from(input: &mut &[u8]) -> Result<Self, KeyError> {
        let mut bytes = Vec::new();
        let mut i = 0;
        loop {
            match input.get(i) {
                None => return Err(KeyError::Truncated),
                Some(0) => match input.get(i + 1) {
                    Some(0) => break,
                    Some(0xFF) => {
                        bytes.push(0);
                        i += 2;
                    }
                    Some(_) => return Err(KeyError::BadEscape),
                    None => return Err(KeyError::Truncated),
                },
                Some(&b) => {
                    bytes.push(b);
                    i += 1;
                }
            }
        }
        *input = &input[i + 2..];
        String::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)
    }
}

macro_rules! tuple_codec {
    ($($name:ident),+) => {
        impl<$($name: KeyEncode),+> KeyEncode for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode_into(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode_into(out);)+
            }
        }
        impl<$($name: KeyDecode),+> KeyDecode for ($($name,)+) {
            fn decode_from(input: &mut &[u8]) -> Result<Self, KeyError> {
                Ok(($($name::decode_from(input)?,)+))
            }
        }
    };
}

tuple_codec!(A);
tuple_codec!(A, B);
tuple_codec!(A, B, C);
tuple_codec!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_round_trips_and_sorts() {
        let values = [0u64, 1, 255, 256, 65_535, u64::MAX / 2, u64::MAX];
        for pair in values.windows(2) {
            assert!(encode(&pair[0]) < encode(&pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(decode::<u64>(&encode(&v)).unwrap(), v);
        }
    }

    #[test]
    fn strings_round_trip_including_nul() {
        for s in ["", "a", "@alice:localhost", "with\0nul", "\0", "ünïcödé"] {
            assert_eq!(decode::<String>(&encode(s)).unwrap(), s);
        }
    }

    #[test]
    fn strings_sort_like_their_text() {
        let mut words = vec!["b", "a", "ab", "", "a\0", "a\0b", "aa", "\u{ff}"];
        let mut encoded: Vec<Vec<u8>> = words.iter().map(|w| encode(*w)).collect();
        words.sort();
        encoded.sort();
        let decoded: Vec<String> = encoded.iter().map(|e| decode(e).unwrap()).collect();
        assert_eq!(decoded, words);
    }

    #[test]
    fn tuple_prefix_does_not_match_longer_string() {
        let prefix = encode(&("@a:x",));
        let other = encode(&("@a:xy", "DEVICE"));
        let own = encode(&("@a:x", "DEVICE"));
        assert!(!other.starts_with(&prefix));
        assert!(own.starts_with(&prefix));
    }

    #[test]
    fn tuples_round_trip_and_sort_by_first_then_second() {
        let a = ("@a:x".to_owned(), 2u64);
        let b = ("@a:x".to_owned(), 10u64);
        let c = ("@b:x".to_owned(), 1u64);
        assert!(encode(&a) < encode(&b) && encode(&b) < encode(&c));
        assert_eq!(decode::<(String, u64)>(&encode(&b)).unwrap(), b);
        let three = ("x".to_owned(), "y".to_owned(), 7u64);
        assert_eq!(decode::<(String, String, u64)>(&encode(&three)).unwrap(), three);
    }

    #[test]
    fn malformed_keys_are_errors_not_panics() {
        assert_eq!(decode::<u64>(&[1, 2, 3]), Err(KeyError::Truncated));
        assert_eq!(decode::<String>(b"abc"), Err(KeyError::Truncated));
        assert_eq!(decode::<String>(&[b'a', 0, 7]), Err(KeyError::BadEscape));
        assert_eq!(decode::<String>(&[0xC3, 0, 0]), Err(KeyError::NotUtf8));
        let mut long = encode(&5u64);
        long.push(9);
        assert_eq!(decode::<u64>(&long), Err(KeyError::Trailing(1)));
        assert_eq!(decode::<[u8; 4]>(&[1, 2, 3, 4]).unwrap(), [1, 2, 3, 4]);
    }
}
