//! How long a read may wait for its `min_position`: the server's bound, or less when the
//! client's deadline (`grpc-timeout`) is nearer, so the answer is our clear
//! `DEADLINE_EXCEEDED` naming the applied position rather than the transport cutting the
//! call. One rule for every service.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The wait for a call with `metadata`: `cap`, or the client's deadline less a margin to
/// answer in (a tenth of it, between 20 and 100 ms) when that is shorter.
pub fn wait_budget(metadata: &MetadataMap, cap: Duration) -> Duration {
    let Some(deadline) = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    else {
        return cap;
    };
    let margin = (deadline / 10).clamp(Duration::from_millis(20), Duration::from_millis(100));
    deadline.saturating_sub(margin).min(cap)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn the_nearer_of_the_cap_and_the_deadline_less_a_margin() {
        let cap = Duration::from_secs(10);
        assert_eq!(wait_budget(&MetadataMap::new(), cap), cap);
        assert_eq!(wait_budget(&with_timeout("60S"), cap), cap);
        // A tenth of 2 s is 200 ms: the margin stops at 100 ms.
        assert_eq!(
            wait_budget(&with_timeout("2S"), cap),
            Duration::from_millis(1_900)
        );
        // A tenth of 100 ms is 10 ms: the margin is at least 20 ms.
        assert_eq!(
            wait_budget(&with_timeout("100m"), cap),
            Duration::from_millis(80)
        );
        assert_eq!(
            wait_budget(&with_timeout("10m"), cap),
            Duration::from_millis(0)
        );
        // Unreadable values are ignored.
        assert_eq!(wait_budget(&with_timeout("10x"), cap), cap);
        assert_eq!(wait_budget(&with_timeout("1234567890S"), cap), cap);
    }
}
