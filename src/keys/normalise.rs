//! Normalisation of looked-up identifiers before they are hashed into lookup tokens.
//!
//! A token is a keyed hash, so two spellings of one address must become the same string
//! first, or a lookup by `Ann@Example.com` would miss the customer registered as
//! `ann@example.com `. The rules are deliberately simple and stable: changing one
//! changes tokens already stored in stream names.

/// Digits in a phone number after normalisation, E.164 allows 15; fewer than 4 is a typo.
const PHONE_DIGITS: std::ops::RangeInclusive<usize> = 4..=15;

/// An email address for lookups: trimmed and lower-cased (Unicode lowercase).
/// `None` unless it has a non-empty part on both sides of its last `@` and no whitespace
/// or control characters inside.
pub fn normalise_email(s: &str) -> Option<String> {
    let lowered = s.trim().to_lowercase();
    let (local, domain) = lowered.rsplit_once('@')?;
    let bad = |c: char| c.is_whitespace() || c.is_control();
    if local.is_empty() || domain.is_empty() || lowered.chars().any(bad) {
        return None;
    }
    Some(lowered)
}

/// A phone number for lookups, E.164-style: a leading `+` is kept; spaces, dashes, dots
/// and parentheses are dropped; a `00` international prefix becomes `+`. `None` unless
/// what remains is an optional `+` followed by 4 to 15 ASCII digits.
pub fn normalise_phone(s: &str) -> Option<String> {
    let kept: String = s
        .chars()
        .filter(|&c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect();
    let kept = match kept.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => kept,
    };
    let digits = kept.strip_prefix('+').unwrap_or(&kept);
    if PHONE_DIGITS.contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Some(kept)
    } else {
        None
    }
}

/// An external id `system:value` for lookups: the whole and both parts trimmed, case
/// kept (other systems' ids are often case-sensitive). `None` unless both parts are
/// non-empty.
pub fn normalise_external_id(s: &str) -> Option<String> {
    let (system, value) = s.trim().split_once(':')?;
    let (system, value) = (system.trim(), value.trim());
    if system.is_empty() || value.is_empty() {
        return None;
    }
    Some(format!("{system}:{value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalise_email("  Ann.Lee@Example.COM\n").as_deref(),
            Some("ann.lee@example.com")
        );
        assert_eq!(
            normalise_email("ÉLODIE@exemple.fr").as_deref(),
            Some("élodie@exemple.fr")
        );
        assert_eq!(normalise_email("ann@b@c.d").as_deref(), Some("ann@b@c.d"));
        for bad in ["", "   ", "ann", "@example.com", "ann@", "an n@example.com"] {
            assert_eq!(normalise_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn phones() {
        let cases = [
            ("+44 20 7946 0958", Some("+442079460958")),
            ("0044 (20) 7946-0958", Some("+442079460958")),
            ("(030) 123.45.67", Some("0301234567")),
            ("  +1-555-0100  ", Some("+15550100")),
            ("1234", Some("1234")),
            ("123", None),
            ("+1234567890123456", None),
            ("+44 20 CALL ME", None),
            ("44+20", None),
            ("++4420", None),
            ("", None),
            ("+", None),
            ("٠١٢٣٤٥", None),
        ];
        for (input, expected) in cases {
            assert_eq!(normalise_phone(input).as_deref(), expected, "{input:?}");
        }
    }

    #[test]
    fn external_ids() {
        assert_eq!(
            normalise_external_id("  shopify : AB-12 ").as_deref(),
            Some("shopify:AB-12")
        );
        assert_eq!(normalise_external_id("erp:a:b").as_deref(), Some("erp:a:b"));
        for bad in ["", "shopify", ":x", "x:", " : "] {
            assert_eq!(normalise_external_id(bad), None, "{bad:?}");
        }
    }
}
