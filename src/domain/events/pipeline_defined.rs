//! `PipelineDefined` / `PipelineChanged`: a sales pipeline and its ordered stages, and the
//! value types the sales events share (stage kinds, stage codes, validation helpers).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::{validate_currency, validate_id};
use crate::domain::violations::Violations;
use crate::limits::{
    FIELD_BYTES_MAX, PIPELINE_CODE_BYTES_MAX, PIPELINE_CURRENCIES_MAX, PIPELINE_STAGES_MAX,
};

/// What reaching a stage means for a deal.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum StageKind {
    /// Not given (refused by validation).
    #[default]
    Unspecified,
    /// The deal is still being worked.
    Open,
    /// The deal was won.
    Won,
    /// The deal was lost.
    Lost,
}

/// One stage of a pipeline. Stages are identified by a stable code, so renaming and
/// reordering keep a deal's stage history readable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Stable code (`qualify`, `proposal`): lower-case letters, digits, `_` and `-`.
    pub stage_id: String,
    /// Display name.
    pub name: String,
    /// Win probability in percent, 0..=100.
    pub probability: u8,
    /// Open, won or lost.
    pub kind: StageKind,
}

/// Checks a stable code (stage id, lost reason): 1..=64 bytes of `[a-z0-9_-]`.
pub fn validate_code(field: &str, code: &str, v: &mut Violations) {
    if code.is_empty() {
        v.add(field, "is required");
    } else if code.len() > PIPELINE_CODE_BYTES_MAX {
        v.add(
            field,
            format!(
                "is {} bytes; the limit is {PIPELINE_CODE_BYTES_MAX}",
                code.len()
            ),
        );
    } else if !code
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        v.add(
            field,
            "must be lower-case letters, digits, '_' and '-' (e.g. \"proposal\")",
        );
    }
}

/// Checks a pipeline definition: a name, currencies, and stages with unique codes,
/// probabilities 0..=100, a kind each, and at least one open, one won and one lost stage.
pub fn validate_definition(
    f: &str,
    name: &str,
    currencies: &[String],
    stages: &[Stage],
    v: &mut Violations,
) {
    v.required(&format!("{f}.name"), name, FIELD_BYTES_MAX);
    v.max_items(
        &format!("{f}.currencies"),
        currencies.len(),
        PIPELINE_CURRENCIES_MAX,
    );
    for (i, currency) in currencies.iter().enumerate() {
        validate_currency(&format!("{f}.currencies[{i}]"), currency, v);
    }
    v.max_items(&format!("{f}.stages"), stages.len(), PIPELINE_STAGES_MAX);
    let mut seen = std::collections::BTreeSet::new();
    for (i, stage) in stages.iter().enumerate() {
        let s = format!("{f}.stages[{i}]");
        validate_code(&format!("{s}.stage_id"), &stage.stage_id, v);
        if !seen.insert(stage.stage_id.as_str()) {
            v.add(&format!("{s}.stage_id"), "is used by an earlier stage");
        }
        v.required(&format!("{s}.name"), &stage.name, FIELD_BYTES_MAX);
        if stage.probability > 100 {
            v.add(&format!("{s}.probability"), "must be 0..=100 (percent)");
        }
        if stage.kind == StageKind::Unspecified {
            v.add(&format!("{s}.kind"), "must be open, won or lost");
        }
    }
    for (kind, word) in [
        (StageKind::Open, "open"),
        (StageKind::Won, "won"),
        (StageKind::Lost, "lost"),
    ] {
        if !stages.iter().any(|s| s.kind == kind) {
            v.add(
                &format!("{f}.stages"),
                format!("needs at least one {word} stage"),
            );
        }
    }
}

/// A sales pipeline was defined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineDefined {
    /// The pipeline's id.
    pub pipeline_id: Uuid,
    /// Its name (`New business`, `Renewals`).
    pub name: String,
    /// ISO 4217 codes its deals may be in; empty: any currency. Amounts in different
    /// currencies are never added together.
    pub currencies: Vec<String>,
    /// Its stages, in board order.
    pub stages: Vec<Stage>,
}

impl TypedEvent for PipelineDefined {
    const EVENT_TYPE: &'static str = "PipelineDefined";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "pipeline_defined";
        validate_id(&format!("{f}.pipeline_id"), &self.pipeline_id, v);
        validate_definition(f, &self.name, &self.currencies, &self.stages, v);
    }
}

/// A pipeline's definition was replaced (renamed, stages added, reordered, re-weighted,
/// or removed when no deal is in them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineChanged {
    /// The pipeline's id.
    pub pipeline_id: Uuid,
    /// Its new name.
    pub name: String,
    /// Its new currencies (empty: any).
    pub currencies: Vec<String>,
    /// Its new stages, in board order.
    pub stages: Vec<Stage>,
}

impl TypedEvent for PipelineChanged {
    const EVENT_TYPE: &'static str = "PipelineChanged";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "pipeline_changed";
        validate_id(&format!("{f}.pipeline_id"), &self.pipeline_id, v);
        validate_definition(f, &self.name, &self.currencies, &self.stages, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(id: &str, probability: u8, kind: StageKind) -> Stage {
        Stage {
            stage_id: id.into(),
            name: id.into(),
            probability,
            kind,
        }
    }

    #[test]
    fn a_definition_needs_open_won_and_lost_stages_with_unique_codes() {
        let mut v = Violations::new("");
        let event = PipelineDefined {
            pipeline_id: Uuid::from_u128(1),
            name: "New business".into(),
            currencies: vec!["EUR".into()],
            stages: vec![
                stage("qualify", 10, StageKind::Open),
                stage("won", 100, StageKind::Won),
                stage("lost", 0, StageKind::Lost),
            ],
        };
        event.validate(&mut v);
        assert!(v.is_empty(), "{v:?}");
        let mut bad = event;
        bad.stages = vec![
            stage("Qualify", 101, StageKind::Open),
            stage("won", 100, StageKind::Won),
            stage("won", 100, StageKind::Unspecified),
        ];
        let mut v = Violations::new("");
        bad.validate(&mut v);
        let fields: Vec<String> = v.into_vec().into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            [
                "pipeline_defined.stages[0].stage_id",
                "pipeline_defined.stages[0].probability",
                "pipeline_defined.stages[2].stage_id",
                "pipeline_defined.stages[2].kind",
                "pipeline_defined.stages",
            ]
        );
    }
}
