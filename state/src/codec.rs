//! The one module that knows how state values are encoded.
//!
//! bincode 2 is no longer maintained, so it stays behind this boundary: each
//! value is stored as one format-version byte followed by the bincode body. A
//! future encoding bumps [`FORMAT_VERSION`] and keeps a decoder for the old one.

use serde::{de::DeserializeOwned, Serialize};

/// The version byte written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value: no format version byte")]
    Empty,
    #[error("value has format version {found}, this build reads version {FORMAT_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("value could not be decoded")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("value decoded with {extra} trailing bytes: wrong type or corrupt data")]
    Trailing { extra: usize },
    #[error("value could not be encoded")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Encodes `value` with the current format version.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(CodecError::Encode)?;
    Ok(out)
}

/// Decodes a value written by [`encode`], refusing unknown versions and leftovers.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(CodecError::Decode)?;
    if used != body.len() {
        return Err(CodecError::Trailing {
            extra: body.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: Vec<Option<i64>>,
        b: BTreeMap<i64, u32>,
        c: String,
    }

    proptest! {
        #[test]
        fn round_trips(a in proptest::collection::vec(any::<Option<i64>>(), 0..20),
                       b in proptest::collection::btree_map(any::<i64>(), any::<u32>(), 0..20),
                       c in ".*") {
            let s = Sample { a, b, c };
            let bytes = encode(&s).unwrap();
            prop_assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
        }
    }

    #[test]
    fn refuses_unknown_version_and_garbage() {
        let mut bytes = encode(&42_i64).unwrap();
        bytes[0] = 99;
        assert!(matches!(
            decode::<i64>(&bytes),
            Err(CodecError::UnknownVersion { found: 99 })
        ));
        assert!(matches!(decode::<i64>(&[]), Err(CodecError::Empty)));
        let two = encode(&(1_i64, 2_i64)).unwrap();
        assert!(matches!(
            decode::<i64>(&two),
            Err(CodecError::Trailing { .. })
        ));
        assert!(decode::<String>(&[FORMAT_VERSION, 200]).is_err());
    }
}
