//! Timestamps as the orders stream stores them: UTC, millisecond precision, `Z` suffix.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Drops everything below the millisecond, so a time survives a round trip through any backend.
#[must_use]
pub fn truncate_to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

/// Formats a time the way the Wazuh documents carry it: `2026-11-27T10:00:00.000Z`.
#[must_use]
pub fn format_millis(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde helpers for a required timestamp.
pub(crate) mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_millis(t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|t| super::truncate_to_millis(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for an optional timestamp.
pub(crate) mod opt_millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_millis(t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        raw.map(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .map(|t| super::truncate_to_millis(t.with_timezone(&Utc)))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_with_milliseconds_and_z() {
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        assert_eq!(format_millis(&t), "2026-11-27T10:00:00.000Z");
    }

    #[test]
    fn truncation_drops_sub_millisecond_digits() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            format_millis(&truncate_to_millis(t)),
            "2026-11-27T10:00:00.123Z"
        );
    }
}
