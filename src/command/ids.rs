//! Who a peer is ([`ServerId`]) and where it listens ([`ServerAddress`]).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! shared_str_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl AsRef<str>) -> Self {
                Self(Arc::from(value.as_ref()))
            }

            /// The string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// True when the string is empty (an unset value).
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self::new(value)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(Arc::from(value))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // Borrow when the format allows it, so decoding makes one allocation (the Arc).
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(Self::new(value))
            }
        }
    };
}

shared_str_newtype!(
    /// A Raft server's stable identity (hashicorp/raft's `ServerID`).
    ///
    /// Over QUIC it is also the node id in the certificate's SPIFFE URI
    /// `spiffe://<cluster>/node/<id>`. Cheap to clone.
    ServerId
);

shared_str_newtype!(
    /// Where a Raft server can be reached (hashicorp/raft's `ServerAddress`), such as
    /// `"192.0.2.10:7000"` for the QUIC transport or any unique name for the in-memory one.
    /// Cheap to clone.
    ServerAddress
);

impl From<std::net::SocketAddr> for ServerAddress {
    fn from(addr: std::net::SocketAddr) -> Self {
        Self::from(addr.to_string())
    }
}
