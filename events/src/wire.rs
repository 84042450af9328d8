//! Serde for events whose JSON shape a binary format cannot carry.
//!
//! Timely exchanges data between processes as bincode, which is not self-describing: it
//! cannot represent `#[serde(flatten)]`, `untagged` enums, or fields skipped when empty (the
//! reader cannot know they were skipped). The JSON contracts need those shapes. So these types
//! derive their JSON form under `#[serde(remote = "Self")]` (inherent functions, not the
//! traits), and implement the traits here: the derived form for human-readable formats, and
//! that same JSON as one string for binary ones. Only rare events take this path (anomalies,
//! dead letters, drift events), never readings.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Serializes with `json` (the derived form) for a human-readable serializer, and as the JSON
/// text otherwise.
pub fn serialize<T, S>(
    value: &T,
    serializer: S,
    json: impl Fn(&T, &mut serde_json::Serializer<&mut Vec<u8>>) -> serde_json::Result<()>,
    derived: impl FnOnce(&T, S) -> Result<S::Ok, S::Error>,
) -> Result<S::Ok, S::Error>
where
    S: Serializer,
{
    if serializer.is_human_readable() {
        return derived(value, serializer);
    }
    let mut bytes = Vec::new();
    json(value, &mut serde_json::Serializer::new(&mut bytes)).map_err(serde::ser::Error::custom)?;
    let text = String::from_utf8(bytes).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// The inverse of [`serialize`].
pub fn deserialize<'de, T, D>(
    deserializer: D,
    json: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::StrRead<'_>>) -> serde_json::Result<T>,
    derived: impl FnOnce(D) -> Result<T, D::Error>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    if deserializer.is_human_readable() {
        return derived(deserializer);
    }
    let text = String::deserialize(deserializer)?;
    json(&mut serde_json::Deserializer::from_str(&text)).map_err(D::Error::custom)
}

/// Implements `Serialize` and `Deserialize` for a type that derives them with
/// `#[serde(remote = "Self")]`, through [`serialize`] and [`deserialize`].
macro_rules! json_when_binary {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::wire::serialize(
                    self,
                    serializer,
                    |v, json| <$ty>::serialize(v, json),
                    |v, s| <$ty>::serialize(v, s),
                )
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::wire::deserialize(
                    deserializer,
                    |json| <$ty>::deserialize(json),
                    |d| <$ty>::deserialize(d),
                )
            }
        }
    };
}
pub(crate) use json_when_binary;
