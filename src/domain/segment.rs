//! Segment rules: a small expression language over the customer read model, parsed into
//! a tree and evaluated against a profile at a given time (never the wall clock).
//!
//! ```text
//! rule      := or
//! or        := and ("or" and)*
//! and       := unary ("and" unary)*
//! unary     := "not" unary | "(" rule ")" | predicate
//! predicate := "spent" CUR CMP INT            net spent (orders − refunds), minor units
//!            | "orders" [CUR] CMP INT         orders (in one currency, or all)
//!            | "aov" CUR CMP INT              average order value, minor units
//!            | "last_purchase" "within" DUR   an order in the last DUR
//!            | "last_purchase" "before" DUR   orders, but none in the last DUR
//!            | "last_activity" "within" DUR
//!            | "tag" STR                      has the tag
//!            | "consent" PURPOSE              consent currently given
//!            | "pref" KEY "=" STR             preference equals
//!            | "field" KEY CMP (INT | STR | "true" | "false")   plain custom field
//!            | "channel" CHANNEL              active on the channel
//!            | "rfm" STR                      the customer's RFM segment (when given)
//! CMP := "=" | "!=" | "<" | "<=" | ">" | ">="      DUR := INT ("d" | "w" | "m" | "y")
//! CUR := three upper-case letters      STR := "..." (double quotes)  KEY := [a-z0-9_.:-]+
//! ```
//! `m` is 30 days and `y` 365 days. Words are case-sensitive. A parse error names the
//! column (1-based) where it went wrong.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::common::{Channel, ConsentPurpose};
use super::events::FieldValue;
use super::profile::{Profile, StoredField};
use crate::limits::{SEGMENT_RULE_BYTES_MAX, SEGMENT_RULE_DEPTH_MAX};

const DAY_US: i64 = 86_400_000_000;

/// A rule that does not parse: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    /// 1-based column of the offending token.
    pub column: usize,
    /// What was expected or found.
    pub message: String,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    fn holds<T: Ord>(self, a: T, b: T) -> bool {
        match self {
            Self::Eq => a == b,
            Self::Ne => a != b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
        }
    }
}

/// A literal a custom field is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Literal {
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
    /// A boolean.
    Bool(bool),
}

/// A parsed rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Both.
    And(Box<Rule>, Box<Rule>),
    /// Either.
    Or(Box<Rule>, Box<Rule>),
    /// Not.
    Not(Box<Rule>),
    /// Net spent in a currency.
    Spent(String, Cmp, i64),
    /// Orders, in a currency or all.
    Orders(Option<String>, Cmp, i64),
    /// Average order value in a currency.
    Aov(String, Cmp, i64),
    /// An order within the last N microseconds.
    LastPurchaseWithin(i64),
    /// Has orders but none within the last N microseconds.
    LastPurchaseBefore(i64),
    /// Any activity within the last N microseconds.
    LastActivityWithin(i64),
    /// Has a tag.
    Tag(String),
    /// Consent given.
    Consent(ConsentPurpose),
    /// Preference equals.
    Pref(String, String),
    /// Custom field compared.
    Field(String, Cmp, Literal),
    /// Active on a channel.
    Channel(Channel),
    /// RFM segment name.
    Rfm(String),
}

/// What a rule is evaluated against besides the profile.
#[derive(Clone, Copy, Debug)]
pub struct EvalContext<'a> {
    /// The time recency is measured from (business time, UTC microseconds).
    pub as_of_us: i64,
    /// RFM segment per customer, when the caller computed it.
    pub rfm: Option<&'a BTreeMap<Uuid, String>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Int(i64),
    Dur(i64),
    Op(&'static str),
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let err = |column: usize, message: &str| ParseError {
        column,
        message: message.to_owned(),
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push((column, Token::Open));
            i += 1;
        } else if c == ')' {
            out.push((column, Token::Close));
            i += 1;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(column, "unterminated string")),
                    Some('"') => break,
                    Some('\\') if chars.get(i + 1) == Some(&'"') => {
                        s.push('"');
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push((column, Token::Str(s)));
        } else if "=!<>".contains(c) {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = match two.as_str() {
                "!=" => "!=",
                "<=" => "<=",
                ">=" => ">=",
                _ => match c {
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    _ => return Err(err(column, "expected != (a lone ! is not an operator)")),
                },
            };
            i += op.len();
            out.push((column, Token::Op(op)));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            let n: i64 = digits
                .parse()
                .map_err(|_| err(column, "number out of range"))?;
            let unit = chars.get(i).copied();
            let days = match unit {
                Some('d') => Some(1),
                Some('w') => Some(7),
                Some('m') => Some(30),
                Some('y') => Some(365),
                _ => None,
            };
            let follows_word = chars.get(i + 1).is_some_and(|ch| ch.is_alphanumeric());
            match days {
                Some(days) if !follows_word => {
                    i += 1;
                    let us = n
                        .checked_mul(days * DAY_US)
                        .filter(|us| *us >= 0)
                        .ok_or_else(|| err(column, "duration out of range"))?;
                    out.push((column, Token::Dur(us)));
                }
                _ => out.push((column, Token::Int(n))),
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|ch| ch.is_alphanumeric() || matches!(ch, '_' | '.' | ':' | '-'))
            {
                i += 1;
            }
            out.push((column, Token::Word(chars[start..i].iter().collect())));
        } else {
            return Err(err(column, &format!("unexpected character {c:?}")));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    end_column: usize,
}

impl Parser {
    fn column(&self) -> usize {
        self.tokens
            .get(self.at)
            .map_or(self.end_column, |(c, _)| *c)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.column(),
            message: message.into(),
        })
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some((_, Token::Word(w))) if w == word)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(_, t)| t.clone());
        self.at += 1;
        token
    }

    fn or(&mut self, depth: usize) -> Result<Rule, ParseError> {
        let mut rule = self.and(depth)?;
        while self.peek_word("or") {
            self.at += 1;
            rule = Rule::Or(Box::new(rule), Box::new(self.and(depth)?));
        }
        Ok(rule)
    }

    fn and(&mut self, depth: usize) -> Result<Rule, ParseError> {
        let mut rule = self.unary(depth)?;
        while self.peek_word("and") {
            self.at += 1;
            rule = Rule::And(Box::new(rule), Box::new(self.unary(depth)?));
        }
        Ok(rule)
    }

    fn unary(&mut self, depth: usize) -> Result<Rule, ParseError> {
        if depth > SEGMENT_RULE_DEPTH_MAX {
            return self.fail(format!(
                "nested deeper than {SEGMENT_RULE_DEPTH_MAX} levels"
            ));
        }
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Rule::Not(Box::new(self.unary(depth + 1)?)));
        }
        if matches!(self.tokens.get(self.at), Some((_, Token::Open))) {
            self.at += 1;
            let rule = self.or(depth + 1)?;
            if !matches!(self.tokens.get(self.at), Some((_, Token::Close))) {
                return self.fail("expected )");
            }
            self.at += 1;
            return Ok(rule);
        }
        self.predicate()
    }

    fn cmp(&mut self) -> Result<Cmp, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Op(op)) => Ok(match op {
                "=" => Cmp::Eq,
                "!=" => Cmp::Ne,
                "<" => Cmp::Lt,
                "<=" => Cmp::Le,
                ">" => Cmp::Gt,
                _ => Cmp::Ge,
            }),
            _ => Err(ParseError {
                column,
                message: "expected a comparison (= != < <= > >=)".into(),
            }),
        }
    }

    fn int(&mut self) -> Result<i64, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Int(n)) => Ok(n),
            _ => Err(ParseError {
                column,
                message: "expected an integer (money is in minor units)".into(),
            }),
        }
    }

    fn currency(&mut self) -> Result<String, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Word(w)) if w.len() == 3 && w.bytes().all(|b| b.is_ascii_uppercase()) => {
                Ok(w)
            }
            _ => Err(ParseError {
                column,
                message: "expected a currency such as EUR".into(),
            }),
        }
    }

    fn duration(&mut self) -> Result<i64, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Dur(us)) => Ok(us),
            _ => Err(ParseError {
                column,
                message: "expected a duration such as 90d, 12w, 6m or 1y".into(),
            }),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            _ => Err(ParseError {
                column,
                message: format!("expected {what} in double quotes"),
            }),
        }
    }

    fn key(&mut self) -> Result<String, ParseError> {
        let column = self.column();
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            _ => Err(ParseError {
                column,
                message: "expected a key".into(),
            }),
        }
    }

    fn predicate(&mut self) -> Result<Rule, ParseError> {
        let column = self.column();
        let Some(Token::Word(word)) = self.next() else {
            return Err(ParseError {
                column,
                message: "expected a predicate (spent, orders, aov, last_purchase, \
                          last_activity, tag, consent, pref, field, channel, rfm), not or ("
                    .into(),
            });
        };
        Ok(match word.as_str() {
            "spent" => {
                let currency = self.currency()?;
                Rule::Spent(currency, self.cmp()?, self.int()?)
            }
            "aov" => {
                let currency = self.currency()?;
                Rule::Aov(currency, self.cmp()?, self.int()?)
            }
            "orders" => {
                let currency = match self.tokens.get(self.at) {
                    Some((_, Token::Word(_))) => Some(self.currency()?),
                    _ => None,
                };
                Rule::Orders(currency, self.cmp()?, self.int()?)
            }
            "last_purchase" | "last_activity" => {
                let column = self.column();
                let how = self.next();
                match (word.as_str(), how) {
                    ("last_purchase", Some(Token::Word(w))) if w == "within" => {
                        Rule::LastPurchaseWithin(self.duration()?)
                    }
                    ("last_purchase", Some(Token::Word(w))) if w == "before" => {
                        Rule::LastPurchaseBefore(self.duration()?)
                    }
                    ("last_activity", Some(Token::Word(w))) if w == "within" => {
                        Rule::LastActivityWithin(self.duration()?)
                    }
                    _ => {
                        return Err(ParseError {
                            column,
                            message: if word == "last_purchase" {
                                "expected within or before".into()
                            } else {
                                "expected within".into()
                            },
                        });
                    }
                }
            }
            "tag" => Rule::Tag(self.string("a tag")?),
            "consent" => {
                let column = self.column();
                let name = self.key()?;
                let purpose = ConsentPurpose::ALL
                    .into_iter()
                    .find(|p| p.as_str() == name)
                    .ok_or_else(|| ParseError {
                        column,
                        message: format!(
                            "unknown consent purpose {name:?} (one of {})",
                            ConsentPurpose::ALL.map(|p| p.as_str()).join(", ")
                        ),
                    })?;
                Rule::Consent(purpose)
            }
            "pref" => {
                let key = self.key()?;
                if !matches!(self.next(), Some(Token::Op("="))) {
                    self.at -= 1;
                    return self.fail("expected =");
                }
                Rule::Pref(key, self.string("a value")?)
            }
            "field" => {
                let key = self.key()?;
                let cmp = self.cmp()?;
                let column = self.column();
                let literal = match self.next() {
                    Some(Token::Int(n)) => Literal::Int(n),
                    Some(Token::Str(s)) => Literal::Text(s),
                    Some(Token::Word(w)) if w == "true" => Literal::Bool(true),
                    Some(Token::Word(w)) if w == "false" => Literal::Bool(false),
                    _ => {
                        return Err(ParseError {
                            column,
                            message: "expected an integer, a \"string\", true or false".into(),
                        });
                    }
                };
                Rule::Field(key, cmp, literal)
            }
            "channel" => {
                let column = self.column();
                let name = self.key()?;
                let channel = CHANNELS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| ParseError {
                        column,
                        message: format!(
                            "unknown channel {name:?} (one of {})",
                            CHANNELS.map(|(n, _)| n).join(", ")
                        ),
                    })?;
                Rule::Channel(channel)
            }
            "rfm" => Rule::Rfm(self.string("an RFM segment name")?),
            "tier" | "account" => {
                return Err(ParseError {
                    column,
                    message: format!(
                        "{word} rules need the {} read model, which this build does not have yet",
                        if word == "tier" {
                            "loyalty"
                        } else {
                            "accounts"
                        }
                    ),
                });
            }
            other => {
                return Err(ParseError {
                    column,
                    message: format!("unknown predicate {other:?}"),
                });
            }
        })
    }
}

const CHANNELS: [(&str, Channel); 8] = [
    ("store", Channel::Store),
    ("web", Channel::Web),
    ("mobile_app", Channel::MobileApp),
    ("email", Channel::Email),
    ("phone", Channel::Phone),
    ("chat", Channel::Chat),
    ("social", Channel::Social),
    ("messaging", Channel::Messaging),
];

impl Rule {
    /// Parses a rule (at most [`SEGMENT_RULE_BYTES_MAX`] bytes).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        if text.len() > SEGMENT_RULE_BYTES_MAX {
            return Err(ParseError {
                column: 1,
                message: format!("a rule is at most {SEGMENT_RULE_BYTES_MAX} bytes"),
            });
        }
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Err(ParseError {
                column: 1,
                message: "the rule is empty".into(),
            });
        }
        let mut parser = Parser {
            tokens,
            at: 0,
            end_column: text.chars().count() + 1,
        };
        let rule = parser.or(0)?;
        if parser.at < parser.tokens.len() {
            return parser.fail("expected and, or, or the end of the rule");
        }
        Ok(rule)
    }

    /// Does `profile` match, as of the context's time?
    pub fn matches(&self, profile: &Profile, cx: &EvalContext<'_>) -> bool {
        let orders_in = |currency: &str| {
            profile
                .purchases
                .money
                .iter()
                .filter(|f| f.order && f.currency == currency && f.at_us <= cx.as_of_us)
                .count() as i64
        };
        let last_order = || {
            profile
                .purchases
                .money
                .iter()
                .filter(|f| f.order && f.at_us <= cx.as_of_us)
                .map(|f| f.at_us)
                .max()
        };
        match self {
            Self::And(a, b) => a.matches(profile, cx) && b.matches(profile, cx),
            Self::Or(a, b) => a.matches(profile, cx) || b.matches(profile, cx),
            Self::Not(a) => !a.matches(profile, cx),
            Self::Spent(currency, cmp, n) => {
                let net: i64 = profile
                    .purchases
                    .money
                    .iter()
                    .filter(|f| &f.currency == currency && f.at_us <= cx.as_of_us)
                    .map(|f| f.amount_minor)
                    .sum();
                cmp.holds(net, *n)
            }
            Self::Orders(Some(currency), cmp, n) => cmp.holds(orders_in(currency), *n),
            Self::Orders(None, cmp, n) => {
                let all = profile
                    .purchases
                    .money
                    .iter()
                    .filter(|f| f.order && f.at_us <= cx.as_of_us)
                    .count() as i64;
                cmp.holds(all, *n)
            }
            Self::Aov(currency, cmp, n) => {
                let (orders, total) = profile
                    .purchases
                    .money
                    .iter()
                    .filter(|f| f.order && &f.currency == currency && f.at_us <= cx.as_of_us)
                    .fold((0i64, 0i64), |(o, t), f| (o + 1, t + f.amount_minor));
                orders > 0 && cmp.holds(total / orders, *n)
            }
            Self::LastPurchaseWithin(us) => {
                last_order().is_some_and(|last| cx.as_of_us - last <= *us)
            }
            Self::LastPurchaseBefore(us) => {
                last_order().is_some_and(|last| cx.as_of_us - last > *us)
            }
            Self::LastActivityWithin(us) => profile
                .last_activity_us
                .is_some_and(|last| last <= cx.as_of_us && cx.as_of_us - last <= *us),
            Self::Tag(tag) => profile.tags.contains(tag),
            Self::Consent(purpose) => profile.consent(*purpose).is_some_and(|c| c.granted),
            Self::Pref(key, value) => profile.preferences.get(key) == Some(value),
            Self::Field(key, cmp, literal) => match (profile.custom_fields.get(key), literal) {
                (Some(StoredField::Plain(FieldValue::Number(d))), Literal::Int(n)) => {
                    // Compare decimals exactly: scale the integer to the field's scale.
                    let scaled = 10i128.pow(u32::from(d.scale)) * i128::from(*n);
                    cmp.holds(i128::from(d.mantissa), scaled)
                }
                (Some(StoredField::Plain(FieldValue::Text(t))), Literal::Text(s)) => {
                    cmp.holds(t.as_str(), s.as_str())
                }
                (Some(StoredField::Plain(FieldValue::Bool(b))), Literal::Bool(l)) => {
                    cmp.holds(*b, *l)
                }
                _ => false,
            },
            Self::Channel(channel) => profile.channels.contains(channel),
            Self::Rfm(name) => cx
                .rfm
                .and_then(|map| map.get(&profile.customer_id))
                .is_some_and(|segment| segment == name),
        }
    }

    /// True when the rule's answer changes with the evaluation time alone (recency).
    pub fn depends_on_time(&self) -> bool {
        match self {
            Self::And(a, b) | Self::Or(a, b) => a.depends_on_time() || b.depends_on_time(),
            Self::Not(a) => a.depends_on_time(),
            Self::LastPurchaseWithin(_)
            | Self::LastPurchaseBefore(_)
            | Self::LastActivityWithin(_) => true,
            // Amounts and counts only include orders up to the evaluation time, and
            // orders can carry business times in the future.
            Self::Spent(..) | Self::Orders(..) | Self::Aov(..) => true,
            _ => false,
        }
    }

    /// True when the rule needs RFM segments computed (over all customers).
    pub fn uses_rfm(&self) -> bool {
        match self {
            Self::And(a, b) | Self::Or(a, b) => a.uses_rfm() || b.uses_rfm(),
            Self::Not(a) => a.uses_rfm(),
            Self::Rfm(_) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::common::Decimal;
    use crate::domain::profile::{ConsentChange, MoneyFact, ProfileStatus};

    const NOW: i64 = 1_000 * DAY_US;

    fn ada() -> Profile {
        let mut p = Profile::new(Uuid::from_u128(1));
        p.status = ProfileStatus::Active;
        p.tags.insert("vip".into());
        p.preferences.insert("size".into(), "M".into());
        p.channels.insert(Channel::Web);
        p.custom_fields.insert(
            "shoe_size".into(),
            StoredField::Plain(FieldValue::Number(Decimal {
                mantissa: 425,
                scale: 1,
            })),
        );
        p.consents.insert(
            ConsentPurpose::MarketingEmail,
            vec![ConsentChange {
                granted: true,
                source: "web".into(),
                at_us: 0,
                position: 1,
            }],
        );
        for (day, amount) in [(900, 4000), (980, 2000)] {
            p.purchases.money.push(MoneyFact {
                at_us: day * DAY_US,
                currency: "EUR".into(),
                amount_minor: amount,
                order: true,
            });
        }
        p.purchases.money.push(MoneyFact {
            at_us: 990 * DAY_US,
            currency: "EUR".into(),
            amount_minor: -1000,
            order: false,
        });
        p.last_activity_us = Some(990 * DAY_US);
        p
    }

    fn check(rule: &str) -> bool {
        let cx = EvalContext {
            as_of_us: NOW,
            rfm: None,
        };
        Rule::parse(rule)
            .unwrap_or_else(|e| panic!("{rule}: {e}"))
            .matches(&ada(), &cx)
    }

    #[test]
    fn predicates() {
        assert!(check("spent EUR >= 5000"));
        assert!(!check("spent EUR > 5000"));
        assert!(check(
            "orders = 2 and orders EUR >= 2 and not orders USD > 0"
        ));
        assert!(check("aov EUR = 3000"));
        assert!(check("last_purchase within 30d"));
        assert!(!check("last_purchase within 2w"));
        assert!(check("last_purchase before 2w"));
        assert!(check("last_activity within 10d"));
        assert!(check("tag \"vip\" and consent marketing_email"));
        assert!(!check("consent profiling"));
        assert!(check("pref size = \"M\""));
        assert!(check("field shoe_size > 42 and field shoe_size < 43"));
        assert!(check("channel web and not channel store"));
        assert!(check("(tag \"x\" or tag \"vip\") and not (spent EUR < 0)"));
        assert!(!check("rfm \"Champions\""));
    }

    #[test]
    fn time_moves_the_answer_not_the_clock() {
        let rule = Rule::parse("last_purchase within 30d").unwrap();
        let then = EvalContext {
            as_of_us: NOW,
            rfm: None,
        };
        let later = EvalContext {
            as_of_us: NOW + 40 * DAY_US,
            rfm: None,
        };
        assert!(rule.matches(&ada(), &then));
        assert!(!rule.matches(&ada(), &later));
    }

    #[test]
    fn parse_errors_point_at_the_column() {
        for (rule, column, fragment) in [
            ("spent EUR >= ", 14, "integer"),
            ("spent eur >= 5", 7, "currency"),
            ("tag vip", 5, "double quotes"),
            ("orders = 2 and", 15, "predicate"),
            ("(tag \"a\"", 9, "expected )"),
            ("colour = 3", 1, "unknown predicate"),
            ("consent newsletter", 9, "unknown consent purpose"),
            ("last_purchase since 3d", 15, "within or before"),
            ("tag \"a\" tag \"b\"", 9, "expected and, or"),
            ("tier \"gold\"", 1, "loyalty"),
            ("spent EUR ! 5", 11, "!="),
            ("", 1, "empty"),
        ] {
            let error = Rule::parse(rule).unwrap_err();
            assert_eq!(error.column, column, "{rule}: {error}");
            assert!(error.message.contains(fragment), "{rule}: {error}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}tag \"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(Rule::parse(&deep).is_err());
        let not_deep = format!("{}tag \"a\"", "not ".repeat(100));
        assert!(Rule::parse(&not_deep).is_err());
    }
}
