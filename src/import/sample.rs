//! A deterministic purchases CSV for benches and tests of `rapport import purchases`.

use std::io::Write;
use std::path::Path;

use crate::cli::CliError;
use crate::seed::SplitMix64;

/// (SKU, name, category, price in cents): plain text, so no CSV quoting is needed.
const ITEMS: &[(&str, &str, &str, i64)] = &[
    ("APP-TEE-001", "Organic cotton T-shirt", "apparel", 1_999),
    ("APP-JNS-002", "Slim fit jeans", "apparel", 5_995),
    ("SHO-RUN-006", "Running shoes", "shoes", 10_995),
    ("HOM-LMP-012", "Desk lamp", "home", 3_999),
    ("KIT-MUG-016", "Stoneware mug", "kitchen", 990),
    ("BEA-CRM-022", "Face cream", "beauty", 2_450),
    ("ELE-EAR-026", "Wireless earbuds", "electronics", 7_999),
    ("BOO-NOV-031", "Paperback novel", "books", 1_200),
    ("TOY-PUZ-037", "Puzzle 1000 pieces", "toys", 1_799),
];

const CHANNELS: &[&str] = &["store", "web", "mobile_app"];
const CURRENCIES: &[&str] = &["EUR", "EUR", "EUR", "SEK", "USD"];

/// 2023-01-01T00:00:00Z and three years of seconds after it.
const START_SECONDS: i64 = 1_672_531_200;
const SPAN_SECONDS: u64 = 3 * 365 * 86_400;

/// Writes `rows` purchase rows (orders of 1 to 4 adjacent lines, ~2.5 on average) for
/// `customers` customers (`pos_card:<n>`) to `path`, the same for the same
/// `(rows, customers, seed)`. One in ten orders has a date-only `occurred_at`. Returns
/// the number of orders written.
pub fn write_sample_purchases(
    path: &Path,
    rows: u64,
    customers: u64,
    seed: u64,
) -> Result<u64, CliError> {
    let file = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(
        out,
        "customer_external_id,order_id,occurred_at,total_minor,currency,sku,name,category,\
         quantity,unit_price_minor,channel,store_id"
    )?;
    let mut rng = SplitMix64::derived("import-sample", &[seed, rows, customers]);
    let mut written = 0u64;
    let mut orders = 0u64;
    while written < rows {
        let customer = rng.below(customers.max(1));
        let lines = (rng.range(1, 4)).min(rows - written);
        let seconds = START_SECONDS + rng.below(SPAN_SECONDS) as i64;
        let occurred_at = if rng.chance(100) {
            date(seconds)
        } else {
            format!("{}T{}Z", date(seconds), clock(seconds))
        };
        let currency = *rng.pick(CURRENCIES);
        let channel = *rng.pick(CHANNELS);
        let store = if channel == "store" {
            format!("store-{:02}", rng.below(20))
        } else {
            String::new()
        };
        let mut chosen = Vec::with_capacity(lines as usize);
        for _ in 0..lines {
            let item = rng.pick(ITEMS);
            let quantity = rng.range(1, 3) as i64;
            chosen.push((item, quantity));
        }
        let total: i64 = chosen.iter().map(|(item, q)| item.3 * q).sum();
        for ((sku, name, category, price), quantity) in chosen {
            writeln!(
                out,
                "pos_card:{customer},ord-{seed}-{orders},{occurred_at},{total},{currency},{sku},\
                 {name},{category},{quantity},{price},{channel},{store}"
            )?;
        }
        written += lines;
        orders += 1;
    }
    out.flush()?;
    Ok(orders)
}

/// `YYYY-MM-DD` of a Unix time (days from the civil calendar, Howard Hinnant's method).
fn date(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `HH:MM:SS` of a Unix time.
fn clock(seconds: i64) -> String {
    let s = seconds.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3_600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_parser() {
        for seconds in [START_SECONDS, START_SECONDS + 86_399, 1_709_251_200] {
            let text = format!("{}T{}Z", date(seconds), clock(seconds));
            assert_eq!(
                crate::replay::parse_rfc3339(&text),
                Ok(seconds * 1_000_000),
                "{text}"
            );
        }
    }

    #[test]
    fn samples_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        let orders = write_sample_purchases(&a, 100, 10, 7).unwrap();
        assert_eq!(write_sample_purchases(&b, 100, 10, 7).unwrap(), orders);
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text, std::fs::read_to_string(&b).unwrap());
        assert_eq!(text.lines().count(), 101);
    }
}
