//! Field-level validation errors, collected rather than failing on the first, so a
//! client sees everything wrong with a request at once.

/// One invalid field: a dotted path (`events[0].event.customer_registered.emails[1]`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// A collector of violations under a path prefix.
#[derive(Debug, Default)]
pub struct Violations {
    prefix: String,
    list: Vec<FieldViolation>,
}

impl Violations {
    /// An empty collector whose fields are reported under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            list: Vec::new(),
        }
    }

    /// Records that `field` is invalid.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        let field = if self.prefix.is_empty() {
            field.to_owned()
        } else if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.list.push(FieldViolation {
            field,
            description: description.into(),
        });
    }

    /// Checks that `value` is at most `max` bytes.
    pub fn max_len(&mut self, field: &str, value: &str, max: usize) {
        if value.len() > max {
            self.add(
                field,
                format!("is {} bytes; the limit is {max}", value.len()),
            );
        }
    }

    /// Checks that `value` is not empty and at most `max` bytes.
    pub fn required(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.max_len(field, value, max);
        }
    }

    /// Checks that a repeated field has at most `max` items.
    pub fn max_items(&mut self, field: &str, len: usize, max: usize) {
        if len > max {
            self.add(field, format!("has {len} items; the limit is {max}"));
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The violations, or `Ok` when there are none.
    pub fn into_result(self) -> Result<(), Vec<FieldViolation>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }

    /// The violations collected.
    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.list
    }
}
