//! Identifiers: validated newtypes with private fields.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::error::FieldError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            #[must_use]
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// Parses the hyphenated form (`0193…-…`).
            ///
            /// # Errors
            /// A [`FieldError`] on `field` when `raw` is not a UUID.
            pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
                Uuid::try_parse(raw)
                    .map(Self)
                    .map_err(|_| FieldError::new(field, concat!("must be a ", $what, " (a UUID)")))
            }

            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// The identity of one order (one document of the orders stream).
    OrderId,
    "order id"
);
uuid_id!(
    /// The identity shared by every order expanded from one command.
    RequestId,
    "request id"
);

/// Longest agent id, group name or idempotency key accepted.
pub const MAX_NAME_LEN: usize = 255;

/// The rule of [`AgentId`], [`GroupName`] and [`IdempotencyKey`] as a regular expression (the
/// ECMA-262 subset JSON Schema uses), with [`MAX_NAME_LEN`] as the length bound: characters of
/// `[A-Za-z0-9-_.:@]`, and not `.` or `..` (a name of dots only needs at least three). The
/// OpenAPI document states it; the parser below is what applies it.
pub const NAME_PATTERN: &str = r"^(?:\.*[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*|\.{3,})$";

fn check_name(raw: &str, field: &str, what: &str) -> Result<(), FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, format!("{what} must not be empty")));
    }
    if raw.len() > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("{what} must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if raw == "." || raw == ".." {
        return Err(FieldError::new(
            field,
            format!("{what} must not be . or .."),
        ));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return Err(FieldError::new(
            field,
            format!("{what} may contain only letters, digits and - _ . : @"),
        ));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// A [`FieldError`] on `field` when `raw` is empty, longer than
            /// [`MAX_NAME_LEN`], `.`/`..`, or holds a character outside `[A-Za-z0-9-_.:@]`.
            pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
                check_name(raw, field, $what)?;
                Ok(Self(raw.to_owned()))
            }

            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw, "").map_err(|e| serde::de::Error::custom(e.message()))
            }
        }
    };
}

name_id!(
    /// An agent's identity in the registry (Wazuh agent ids are UUIDs or `001`-style numbers).
    AgentId,
    "agent id"
);
name_id!(
    /// A group of agents.
    GroupName,
    "group name"
);
name_id!(
    /// A server component that consumes orders (`vulnerability-detector`, `rbac`): the id of a
    /// `server` target, and the name a component registers and polls under.
    ComponentName,
    "component name"
);
name_id!(
    /// A client-chosen key that makes a submit safe to retry.
    IdempotencyKey,
    "idempotency key"
);

/// Where the ids of a submit come from. Fresh, time-ordered ids come from the ports crate
/// (they need a clock and randomness); [`KeyedIds`] derives them from an idempotency key.
pub trait IdSource {
    /// The `request_id` of the command at `index` in its request.
    fn request_id(&mut self, index: usize) -> RequestId;
    /// The `order_id` of the order of `request` for `target` (an agent id or server component).
    fn order_id(&mut self, request: &RequestId, target: &str) -> OrderId;
}

/// Ids derived (UUID v5) from an idempotency key and a fingerprint of the request body: the same
/// key and body always give the same ids, so a retried submit writes nothing new.
#[derive(Debug, Clone)]
pub struct KeyedIds {
    namespace: Uuid,
}

/// The namespace of every keyed id (a fixed, random UUID of this project).
const KEYED_NAMESPACE: Uuid = Uuid::from_u128(0x5d1e_44f0_7c1b_4a55_9a0e_3b7f_c0de_0001);

impl KeyedIds {
    #[must_use]
    pub fn new(key: &IdempotencyKey, body_fingerprint: &str) -> Self {
        let seed = format!("{}\u{0}{}", key.as_str(), body_fingerprint);
        Self {
            namespace: Uuid::new_v5(&KEYED_NAMESPACE, seed.as_bytes()),
        }
    }
}

impl IdSource for KeyedIds {
    fn request_id(&mut self, index: usize) -> RequestId {
        RequestId(Uuid::new_v5(
            &self.namespace,
            format!("request:{index}").as_bytes(),
        ))
    }

    fn order_id(&mut self, request: &RequestId, target: &str) -> OrderId {
        let seed = format!("order:{request}:{target}");
        OrderId(Uuid::new_v5(&self.namespace, seed.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_accept_wazuh_shapes() {
        for ok in [
            "001",
            "d5b250c4-dfa1-4d94-827f-9f99210dbe6c",
            "web-01.example:x",
            "a@b_c",
        ] {
            assert!(AgentId::parse(ok, "id").is_ok(), "{ok}");
        }
    }

    #[test]
    fn agent_ids_refuse_path_tricks_and_control_characters() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\0b",
            "a b",
            "ä",
            "a%00",
            &"x".repeat(256),
        ] {
            let err = AgentId::parse(bad, "agent_id").unwrap_err();
            assert_eq!(err.field(), "agent_id", "{bad:?}");
        }
    }

    #[test]
    fn uuid_ids_name_the_field_when_malformed() {
        let err = OrderId::parse("not-a-uuid", "order_id").unwrap_err();
        assert_eq!(err.field(), "order_id");
        assert!(OrderId::parse("0193a5e0-0000-7000-8000-000000000000", "order_id").is_ok());
    }

    #[test]
    fn keyed_ids_are_stable_for_the_same_key_and_body() {
        let key = IdempotencyKey::parse("retry-1", "k").unwrap();
        let mut a = KeyedIds::new(&key, "body");
        let mut b = KeyedIds::new(&key, "body");
        let (ra, rb) = (a.request_id(0), b.request_id(0));
        assert_eq!(ra, rb);
        assert_eq!(a.order_id(&ra, "a1"), b.order_id(&rb, "a1"));
        assert_ne!(a.order_id(&ra, "a1"), a.order_id(&ra, "a2"));
        assert_ne!(a.request_id(0), a.request_id(1));
    }

    #[test]
    fn keyed_ids_differ_when_the_body_differs() {
        let key = IdempotencyKey::parse("retry-1", "k").unwrap();
        let mut a = KeyedIds::new(&key, "body-1");
        let mut b = KeyedIds::new(&key, "body-2");
        assert_ne!(a.request_id(0), b.request_id(0));
    }
}

/// The stored form of an agent's key: the lowercase hex SHA-256 of the key. The key itself is
/// shown to its agent once and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(String);

impl KeyHash {
    /// # Errors
    /// A [`FieldError`] on `field` unless `raw` is 64 lowercase hex digits.
    pub fn parse(raw: &str, field: &str) -> Result<Self, FieldError> {
        if raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(field, "must be a hex SHA-256 digest"))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod key_hash_tests {
    use super::*;

    #[test]
    fn key_hashes_are_64_lowercase_hex_digits() {
        assert!(KeyHash::parse(&"ab".repeat(32), "k").is_ok());
        for bad in ["", "xyz", &"AB".repeat(32), &"a".repeat(63)] {
            assert!(KeyHash::parse(bad, "k").is_err(), "{bad}");
        }
    }
}
