//! The one table from our errors to gRPC statuses. Every error of every layer becomes
//! a status here and nowhere else.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;
use crate::domain::customer::RuleError;
use crate::domain::pipeline::SalesRuleError;
use crate::log::{AppendError, ExpectedRevision, LogError, ReadError};
use crate::privacy::PrivacyError;
use crate::projections::ProjectionError;

/// The error domain named in `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "rapport.v1";

/// `INVALID_ARGUMENT` with a `google.rpc.BadRequest` listing every field violation.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let message = match violations.as_slice() {
        [] => "invalid request".to_owned(),
        [one] => format!("{}: {}", one.field, one.description),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more field violations)",
            first.field,
            first.description,
            rest.len()
        ),
    };
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// One invalid field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(vec![FieldViolation {
        field: field.to_owned(),
        description: description.into(),
    }])
}

/// A request whose bytes are not a valid message of its type (invalid UTF-8 in a string,
/// a truncated field, a wrong wire type): `INVALID_ARGUMENT` on the field prost names, as
/// a dotted path of field names (`filter.stream_prefixes`), or on `request` when it names
/// none. Bad input from the client, not a fault of the server (tonic's own codec says
/// `INTERNAL`).
pub fn undecodable_request(error: &prost::DecodeError) -> Status {
    // prost writes "failed to decode Protobuf message: Inner.field: Outer.field: what",
    // the innermost field first.
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path: Vec<&str> = Vec::new();
    while let Some((step, tail)) = rest.split_once(": ") {
        let is_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match step.split_once('.') {
            Some((message, field)) if is_name(message) && is_name(field) => {
                path.push(field);
                rest = tail;
            }
            _ => break,
        }
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    invalid_field(&field, format!("not a valid protobuf message: {rest}"))
}

fn with_info(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

fn expected_text(expected: ExpectedRevision) -> String {
    match expected {
        ExpectedRevision::Any => "any".into(),
        ExpectedRevision::NoStream => "no_stream".into(),
        ExpectedRevision::StreamExists => "stream_exists".into(),
        ExpectedRevision::Exact(revision) => revision.to_string(),
    }
}

impl From<LogError> for Status {
    fn from(error: LogError) -> Self {
        match &error {
            LogError::Unavailable(_) | LogError::Locked(_) => {
                Status::unavailable(error.to_string())
            }
            LogError::Corrupt(_) => Status::data_loss(error.to_string()),
            LogError::Sled(_) | LogError::Io(_) | LogError::UnsupportedFormat { .. } => {
                Status::internal(error.to_string())
            }
        }
    }
}

impl From<AppendError> for Status {
    fn from(error: AppendError) -> Self {
        let message = error.to_string();
        match error {
            AppendError::WrongExpectedRevision {
                stream,
                expected,
                actual,
            } => with_info(
                Code::Aborted,
                message,
                "WRONG_EXPECTED_REVISION",
                HashMap::from([
                    ("stream".to_owned(), stream),
                    ("expected".to_owned(), expected_text(expected)),
                    (
                        "actual".to_owned(),
                        actual.map_or_else(|| "no_stream".to_owned(), |r| r.to_string()),
                    ),
                ]),
            ),
            AppendError::EventIdConflict { ids } => with_info(
                Code::AlreadyExists,
                message,
                "EVENT_ID_CONFLICT",
                HashMap::from([(
                    "event_ids".to_owned(),
                    ids.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                )]),
            ),
            AppendError::DuplicateIdInBatch(_) => invalid_field("events", message),
            AppendError::Empty => invalid_field("events", message),
            AppendError::Overloaded => Status::resource_exhausted(message),
            AppendError::Log(log) => log.into(),
        }
    }
}

impl From<ReadError> for Status {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::StreamNotFound(_) => Status::not_found(error.to_string()),
            ReadError::Log(log) => log.into(),
        }
    }
}

impl From<RuleError> for Status {
    fn from(error: RuleError) -> Self {
        let message = error.to_string();
        match error {
            RuleError::NotFound(id) => with_info(
                Code::NotFound,
                message,
                "CUSTOMER_NOT_FOUND",
                HashMap::from([("customer_id".to_owned(), id.to_string())]),
            ),
            RuleError::AlreadyRegistered(id) => with_info(
                Code::AlreadyExists,
                message,
                "CUSTOMER_EXISTS",
                HashMap::from([("customer_id".to_owned(), id.to_string())]),
            ),
            RuleError::IdentifierInUse { kind, holder } => with_info(
                Code::AlreadyExists,
                message,
                "IDENTIFIER_IN_USE",
                HashMap::from([
                    ("kind".to_owned(), format!("{kind:?}").to_lowercase()),
                    ("holder".to_owned(), holder.to_string()),
                ]),
            ),
            RuleError::InvalidIdentifier { field, reason } => invalid_field(&field, reason),
            RuleError::Erased(_)
            | RuleError::MergeIntoSelf
            | RuleError::MergeIntoMerged { .. }
            | RuleError::DuplicateOrder(_)
            | RuleError::UnknownOrder(_)
            | RuleError::UnknownOrderLine { .. }
            | RuleError::CurrencyMismatch { .. }
            | RuleError::RefundExceedsOrder { .. }
            | RuleError::DuplicateRefund { .. } => {
                let reason = rule_reason(&error);
                with_info(Code::FailedPrecondition, message, reason, HashMap::new())
            }
        }
    }
}

fn rule_reason(error: &RuleError) -> &'static str {
    match error {
        RuleError::Erased(_) => "CUSTOMER_ERASED",
        RuleError::MergeIntoSelf => "MERGE_INTO_SELF",
        RuleError::MergeIntoMerged { .. } => "MERGE_INTO_MERGED",
        RuleError::DuplicateOrder(_) => "DUPLICATE_ORDER",
        RuleError::UnknownOrder(_) => "UNKNOWN_ORDER",
        RuleError::UnknownOrderLine { .. } => "UNKNOWN_ORDER_LINE",
        RuleError::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
        RuleError::RefundExceedsOrder { .. } => "REFUND_EXCEEDS_ORDER",
        RuleError::DuplicateRefund { .. } => "DUPLICATE_REFUND",
        _ => "RULE_VIOLATED",
    }
}

// Sales pipelines (issue 4).
impl From<SalesRuleError> for Status {
    fn from(error: SalesRuleError) -> Self {
        let message = error.to_string();
        let (code, reason, metadata) = match &error {
            SalesRuleError::NotFound { what, id } => (
                Code::NotFound,
                "NOT_FOUND",
                HashMap::from([
                    ("kind".to_owned(), (*what).to_owned()),
                    ("id".to_owned(), id.to_string()),
                ]),
            ),
            SalesRuleError::AlreadyExists { what, id } => (
                Code::AlreadyExists,
                "ALREADY_EXISTS",
                HashMap::from([
                    ("kind".to_owned(), (*what).to_owned()),
                    ("id".to_owned(), id.to_string()),
                ]),
            ),
            SalesRuleError::ContactAlreadyLinked { .. } => (
                Code::AlreadyExists,
                "CONTACT_ALREADY_LINKED",
                HashMap::new(),
            ),
            SalesRuleError::ContactNotLinked { .. } => (
                Code::FailedPrecondition,
                "CONTACT_NOT_LINKED",
                HashMap::new(),
            ),
            SalesRuleError::StageInUse(stage) => (
                Code::FailedPrecondition,
                "STAGE_IN_USE",
                HashMap::from([("stage_id".to_owned(), stage.clone())]),
            ),
            SalesRuleError::UnknownStage(stage) => (
                Code::FailedPrecondition,
                "UNKNOWN_STAGE",
                HashMap::from([("stage_id".to_owned(), stage.clone())]),
            ),
            SalesRuleError::WrongStageKind { stage, .. } => (
                Code::FailedPrecondition,
                "WRONG_STAGE_KIND",
                HashMap::from([("stage_id".to_owned(), stage.clone())]),
            ),
            SalesRuleError::SameStage(_) => {
                (Code::FailedPrecondition, "SAME_STAGE", HashMap::new())
            }
            SalesRuleError::DealClosed(_) => {
                (Code::FailedPrecondition, "DEAL_CLOSED", HashMap::new())
            }
            SalesRuleError::DealNotClosed(_) => {
                (Code::FailedPrecondition, "DEAL_NOT_CLOSED", HashMap::new())
            }
            SalesRuleError::CurrencyNotAllowed { .. } => (
                Code::FailedPrecondition,
                "CURRENCY_NOT_ALLOWED",
                HashMap::new(),
            ),
            SalesRuleError::LeadClosed(_) => {
                (Code::FailedPrecondition, "LEAD_CLOSED", HashMap::new())
            }
            SalesRuleError::LeadWithoutCustomer(_) => (
                Code::FailedPrecondition,
                "LEAD_WITHOUT_CUSTOMER",
                HashMap::new(),
            ),
            SalesRuleError::TaskClosed(_) => {
                (Code::FailedPrecondition, "TASK_CLOSED", HashMap::new())
            }
        };
        with_info(code, message, reason, metadata)
    }
}

impl From<PrivacyError> for Status {
    fn from(error: PrivacyError) -> Self {
        let message = error.to_string();
        match error {
            PrivacyError::Erased(id) => with_info(
                Code::FailedPrecondition,
                message,
                "CUSTOMER_ERASED",
                HashMap::from([("customer_id".to_owned(), id.to_string())]),
            ),
            PrivacyError::WrongStream { field, .. } => invalid_field(&field, message),
            PrivacyError::Keys(_) => Status::internal(message),
        }
    }
}

impl From<ProjectionError> for Status {
    fn from(error: ProjectionError) -> Self {
        let message = error.to_string();
        match error {
            ProjectionError::NotFound(name) => with_info(
                Code::NotFound,
                message,
                "PROJECTION_NOT_FOUND",
                HashMap::from([("projection".to_owned(), name)]),
            ),
            // The read-your-writes wait ran out: the caller may retry with the same
            // min_position (or a longer deadline).
            ProjectionError::NotYet {
                name,
                applied,
                wanted,
            } => with_info(
                Code::DeadlineExceeded,
                message,
                "PROJECTION_NOT_YET",
                HashMap::from([
                    ("projection".to_owned(), name),
                    ("applied_position".to_owned(), applied.to_string()),
                    ("min_position".to_owned(), wanted.to_string()),
                ]),
            ),
            // A failed projection serves nothing newer until an operator rebuilds it.
            ProjectionError::Failed {
                name,
                position,
                error,
            } => with_info(
                Code::Unavailable,
                message,
                "PROJECTION_FAILED",
                HashMap::from([
                    ("projection".to_owned(), name),
                    ("position".to_owned(), position.to_string()),
                    ("error".to_owned(), error),
                ]),
            ),
            ProjectionError::ShuttingDown => Status::unavailable(message),
            ProjectionError::Corrupt(_) => Status::data_loss(message),
            ProjectionError::Log(log) => log.into(),
            ProjectionError::Invalid(_) | ProjectionError::Sled(_) => Status::internal(message),
        }
    }
}

impl From<crate::domain::loyalty::RuleError> for Status {
    fn from(error: crate::domain::loyalty::RuleError) -> Self {
        use crate::domain::loyalty::RuleError as L;
        let message = error.to_string();
        let (code, reason) = match &error {
            L::NoProgramme => (Code::FailedPrecondition, "NO_PROGRAMME"),
            L::NotEnrolled(_) => (Code::NotFound, "MEMBER_NOT_FOUND"),
            L::AlreadyEnrolled(_) => (Code::AlreadyExists, "MEMBER_EXISTS"),
            L::InsufficientPoints { .. } => (Code::FailedPrecondition, "INSUFFICIENT_POINTS"),
            L::BelowMinimum { .. } => (Code::FailedPrecondition, "BELOW_MINIMUM_REDEMPTION"),
            L::UnknownReward(_) => (Code::NotFound, "REWARD_NOT_FOUND"),
            L::RewardExists(_) => (Code::AlreadyExists, "REWARD_EXISTS"),
            L::RewardRetired(_) => (Code::FailedPrecondition, "REWARD_RETIRED"),
            L::OutOfStock(_) => (Code::FailedPrecondition, "OUT_OF_STOCK"),
        };
        let mut info = HashMap::new();
        match &error {
            L::NotEnrolled(id) | L::AlreadyEnrolled(id) => {
                info.insert("customer_id".to_owned(), id.to_string());
            }
            L::UnknownReward(id)
            | L::RewardExists(id)
            | L::RewardRetired(id)
            | L::OutOfStock(id) => {
                info.insert("reward_id".to_owned(), id.to_string());
            }
            L::InsufficientPoints {
                available,
                requested,
            } => {
                info.insert("available".to_owned(), available.to_string());
                info.insert("requested".to_owned(), requested.to_string());
            }
            L::BelowMinimum { minimum, requested } => {
                info.insert("minimum".to_owned(), minimum.to_string());
                info.insert("requested".to_owned(), requested.to_string());
            }
            L::NoProgramme => {}
        }
        with_info(code, message, reason, info)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::grpc::pb;

    fn violations(status: &Status) -> Vec<(String, String)> {
        status
            .get_details_bad_request()
            .expect("a BadRequest")
            .field_violations
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    #[test]
    fn an_undecodable_request_is_invalid_on_the_field_prost_names() {
        // ReadAllRequest { filter (4): Filter { stream_prefixes (1): "\xff" } }
        let bad_utf8 = [0x22, 0x03, 0x0a, 0x01, 0xff];
        let error = pb::ReadAllRequest::decode(&bad_utf8[..]).expect_err("invalid UTF-8");
        let status = undecodable_request(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        let found = violations(&status);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "filter.stream_prefixes");
        assert!(found[0].1.contains("UTF-8"), "{found:?}");
        // A length past the end: the field it cut.
        let error = pb::ReadAllRequest::decode(&[0x22, 0x05, 0x0a][..]).expect_err("truncated");
        let found = violations(&undecodable_request(&error));
        assert_eq!(found[0].0, "filter", "{found:?}");
        // A wire type no field has: no field named, the request as a whole.
        let error = pb::ReadAllRequest::decode(&[0x0f][..]).expect_err("wire type 7");
        let status = undecodable_request(&error);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violations(&status)[0].0, "request");
    }
}
