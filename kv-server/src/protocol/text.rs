//! [`Text`]: the value in a `get` answer.

use std::fmt;
use std::ops::Deref;

use serde::{Serialize, Serializer};

use crate::store::SharedValue;

/// The value in a `get` answer: owned, as a client reads it off the wire, or shared with
/// the map a server read it from.
///
/// Shared, an answer copies nothing. A client may pipeline a thousand `get`s of a 1 MiB
/// value and read none of the answers; the connection stops taking answers once 64 KiB of
/// them wait to be written, and the thousand waiting behind hold the value once, not a
/// thousand times (a gigabyte).
#[derive(Clone)]
pub enum Text {
    /// A value of its own.
    Owned(String),
    /// A value held by a map, counted once more.
    Shared(SharedValue),
}

impl Text {
    /// The value.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Owned(text) => text,
            Text::Shared(value) => value.as_str(),
        }
    }

    /// The value as a string of its own (a copy, if it was shared).
    pub fn into_string(self) -> String {
        match self {
            Text::Owned(text) => text,
            Text::Shared(value) => value.as_str().to_owned(),
        }
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text::Owned(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text::Owned(text.to_owned())
    }
}
