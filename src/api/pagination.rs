//! `limit` and the opaque `cursor` of every listing. A cursor is the hex
//! form of `<list kind>:<key of the last item>`; it is only ever produced
//! by the API, so anything that does not decode is a 400.

use chrono::{DateTime, Utc};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// Longest cursor accepted (a backend name is at most 128 bytes).
const MAX_CURSOR_LEN: usize = 600;

/// `limit`: 1 to 500, 50 when absent.
///
/// # Errors
/// 422 `invalid_limit` for anything else.
pub fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::unprocessable(
            "invalid_limit",
            format!("limit must be an integer from 1 to {MAX_LIMIT}, not {raw:?}"),
        )),
    }
}

/// Which listing a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instances,
    Backends,
    Servers,
    History,
    Rollouts,
    Webhooks,
    Deliveries,
    Approvals,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Instances => "i",
            Kind::Backends => "b",
            Kind::Servers => "s",
            Kind::History => "h",
            Kind::Rollouts => "r",
            Kind::Webhooks => "w",
            Kind::Deliveries => "d",
            Kind::Approvals => "a",
        }
    }
}

/// The cursor that continues after `key`.
pub fn encode(kind: Kind, key: &str) -> String {
    hex(format!("{}:{key}", kind.tag()).as_bytes())
}

/// The key inside a cursor of `kind`; an empty cursor is the first page.
///
/// # Errors
/// 400 `invalid_cursor` when it was not made by this listing.
pub fn decode(kind: Kind, raw: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_cursor",
            "cursor is not one this listing returned; pass next_cursor as it was given",
        )
    };
    if raw.len() > MAX_CURSOR_LEN {
        return Err(bad());
    }
    let bytes = unhex(raw).ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (tag, key) = text.split_once(':').ok_or_else(bad)?;
    if tag != kind.tag() || key.is_empty() || key.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok(key.to_owned())
}

/// A cursor holding an id.
///
/// # Errors
/// 400 `invalid_cursor`.
pub fn decode_id(kind: Kind, raw: Option<&str>) -> Result<i64, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(0);
    };
    decode(kind, raw)?.parse::<i64>().map_err(|_| {
        ApiError::bad_request("invalid_cursor", "cursor is not one this listing returned")
    })
}

/// A history cursor: the `(changed_at, id)` of the last row.
pub fn encode_time_id(at: DateTime<Utc>, id: i64) -> String {
    encode(Kind::History, &format!("{}.{id}", at.timestamp_micros()))
}

/// # Errors
/// 400 `invalid_cursor`.
pub fn decode_time_id(raw: Option<&str>) -> Result<Option<(DateTime<Utc>, i64)>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let key = decode(Kind::History, raw)?;
    // Years 0 to 9999, as RFC 3339 and PostgreSQL both take them.
    const MICROS: std::ops::RangeInclusive<i64> = -62_167_219_200_000_000..=253_402_300_799_999_999;
    let parsed = key.split_once('.').and_then(|(micros, id)| {
        let micros = micros.parse::<i64>().ok().filter(|m| MICROS.contains(m))?;
        let at = DateTime::from_timestamp_micros(micros)?;
        Some((at, id.parse::<i64>().ok()?))
    });
    parsed.map(Some).ok_or_else(|| {
        ApiError::bad_request("invalid_cursor", "cursor is not one this listing returned")
    })
}

/// Splits `limit + 1` fetched rows into the page and whether more follow.
pub fn split<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_foreign_or_garbled_ones() {
        let c = encode(Kind::Servers, "42");
        assert_eq!(decode_id(Kind::Servers, Some(&c)).ok(), Some(42));
        assert!(
            decode_id(Kind::Instances, Some(&c)).is_err(),
            "another list's cursor"
        );
        assert_eq!(
            decode_id(Kind::Servers, Some("")).ok(),
            Some(0),
            "empty: first page"
        );
        let far = encode(Kind::History, &format!("{}.1", i64::MAX));
        assert!(
            decode_time_id(Some(&far)).is_err(),
            "out of PostgreSQL's range"
        );
        for bad in [
            "zz",
            "abc",
            "00",
            &hex(b"s:x"),
            &hex(b"s:\0"),
            &"a".repeat(2000),
        ] {
            assert!(decode_id(Kind::Servers, Some(bad)).is_err(), "{bad:?}");
        }
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let c = encode_time_id(at, 7);
        assert_eq!(decode_time_id(Some(&c)).ok().flatten(), Some((at, 7)));
        assert_eq!(
            decode(Kind::Backends, &encode(Kind::Backends, "web:1"))
                .ok()
                .as_deref(),
            Some("web:1")
        );
    }

    #[test]
    fn limits_default_and_stay_in_range() {
        assert_eq!(limit(None).ok(), Some(50));
        assert_eq!(limit(Some("500")).ok(), Some(500));
        for bad in ["0", "501", "-1", "x", ""] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(split(vec![1, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(split(vec![1, 2], 2), (vec![1, 2], false));
    }
}
