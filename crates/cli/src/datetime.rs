//! ISO 8601 date-times to Unix milliseconds, for `group reset-offsets --to-datetime`.
//!
//! Accepted: `2024-05-01`, `2024-05-01T12:30`, `2024-05-01T12:30:15`, `...:15.250`, each with an
//! optional zone `Z`, `+02:00`, `-0500` or `+02`; a space may stand for the `T`. A time without
//! a zone is UTC: a CLI that must give the same answer on every host has no business guessing
//! the local zone.

/// Parses an ISO 8601 date-time into milliseconds since the Unix epoch.
pub(crate) fn parse_iso8601(s: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!("'{s}' is not an ISO 8601 date-time ({why}); e.g. 2024-05-01T12:30:00Z")
    };
    let s = s.trim();
    let (date, rest) = s.split_at(s.find(['T', 't', ' ']).unwrap_or(s.len()));
    let mut parts = date.split('-');
    let year: i64 = num(parts.next(), 4).ok_or_else(|| bad("year"))?;
    let month: i64 = num(parts.next(), 2).ok_or_else(|| bad("month"))?;
    let day: i64 = num(parts.next(), 2).ok_or_else(|| bad("day"))?;
    if parts.next().is_some()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return Err(bad("date"));
    }
    let mut ms_of_day = 0i64;
    let mut offset_ms = 0i64;
    if !rest.is_empty() {
        let rest = &rest[1..];
        let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
        let (time, zone) = rest.split_at(zone_at);
        let (hms, frac) = match time.split_once('.') {
            Some((hms, frac)) => (hms, Some(frac)),
            None => (time, None),
        };
        let mut fields = hms.split(':');
        let h: i64 = num(fields.next(), 2).ok_or_else(|| bad("hour"))?;
        let m: i64 = num(fields.next(), 2).ok_or_else(|| bad("minute"))?;
        let sec: i64 = match fields.next() {
            None => 0,
            some => num(some, 2).ok_or_else(|| bad("second"))?,
        };
        if fields.next().is_some() || h > 23 || m > 59 || sec > 60 {
            return Err(bad("time"));
        }
        let millis = match frac {
            None => 0,
            Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                // Keep milliseconds; finer digits are below Kafka's timestamp resolution.
                let mut digits: String = f.chars().take(3).collect();
                while digits.len() < 3 {
                    digits.push('0');
                }
                digits.parse::<i64>().map_err(|_| bad("fraction"))?
            }
            Some(_) => return Err(bad("fraction")),
        };
        ms_of_day = ((h * 60 + m) * 60 + sec.min(59)) * 1000 + millis;
        offset_ms = parse_zone(zone).ok_or_else(|| bad("zone"))?;
    }
    Ok(days_from_civil(year, month, day) * 86_400_000 + ms_of_day - offset_ms)
}

fn num(part: Option<&str>, len: usize) -> Option<i64> {
    let p = part?;
    if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// `Z`, `+HH:MM`, `+HHMM`, `+HH` (or empty: UTC) as an offset in milliseconds east of UTC.
fn parse_zone(zone: &str) -> Option<i64> {
    if zone.is_empty() || zone.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    let (h, m) = match digits.len() {
        2 => (num(Some(&digits), 2)?, 0),
        4 => (num(Some(&digits[..2]), 2)?, num(Some(&digits[2..]), 2)?),
        _ => return None,
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 60 + m) * 60_000)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(parse_iso8601("1970-01-01"), Ok(0));
        assert_eq!(parse_iso8601("1970-01-01T00:00:01Z"), Ok(1000));
        // 2023-11-14T22:13:20Z is 1_700_000_000 s.
        assert_eq!(parse_iso8601("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_iso8601("2023-11-14T22:13:20.5Z"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_iso8601("2023-11-14 22:13:20.123456"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            parse_iso8601("2023-11-15T00:13:20+02:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_iso8601("2023-11-14T17:13:20-0500"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_iso8601("2024-02-29T00:00"), Ok(1_709_164_800_000));
    }

    #[test]
    fn refuses_nonsense() {
        for s in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-02-29",
            "2023-01-01T25:00",
            "2023-1-1",
            "2023-01-01T10:00+2",
        ] {
            assert!(parse_iso8601(s).is_err(), "{s} should be refused");
        }
    }
}
