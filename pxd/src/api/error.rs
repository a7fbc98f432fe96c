//! How the API refuses: one body for every error, `{code, message, field}`, with the HTTP
//! status of its class. A refusal names the field at fault by leading its message with it
//! (`size: ...`), the convention every handler and the volume spec keep; `field` carries it.

use crate::cluster::ClusterError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// What every error answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The class of error: `bad_request`, `not_found`, `conflict`, `unauthorized`,
    /// `no_quorum`, `timeout`, `rejected`, `bad_token`, ...
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when there is one (`size`, `options.repl`, `ttl`, ...).
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    #[error("{0}")]
    Node(String),
    #[error("{0}")]
    MethodNotAllowed(String),
}

impl ApiError {
    pub(super) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Node(_) => (StatusCode::INTERNAL_SERVER_ERROR, "node"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Cluster(e) => match e {
                ClusterError::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
                // Not a quorum problem: the change may still be applied, so not a plain 503.
                ClusterError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                ClusterError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
                ClusterError::LastMember(_) => (StatusCode::CONFLICT, "last_member"),
                ClusterError::AlreadyMember(_) => (StatusCode::CONFLICT, "already_member"),
                ClusterError::NotInCluster => (StatusCode::CONFLICT, "not_in_cluster"),
                ClusterError::Token(_) => (StatusCode::BAD_REQUEST, "bad_token"),
                ClusterError::JoinRefused(_) => (StatusCode::FORBIDDEN, "join_refused"),
                ClusterError::MemberUnreachable { .. } => (StatusCode::BAD_GATEWAY, "unreachable"),
                ClusterError::Invalid { .. } | ClusterError::Rejected(_) => {
                    (StatusCode::BAD_REQUEST, "rejected")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }

    /// The request field the error is about: the name its message leads with, the inner
    /// path of a body that did not parse, or the field a cluster check named.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest(m) => match m.strip_prefix("body: ") {
                Some(rest) => Some(leading_field(rest).unwrap_or("body")),
                None => leading_field(m),
            },
            ApiError::Cluster(ClusterError::Invalid { field, .. }) => Some(field),
            ApiError::Cluster(ClusterError::Token(_)) => Some("token"),
            ApiError::Cluster(ClusterError::Rejected(m)) => leading_field(m),
            _ => None,
        }
    }
}

/// `name` of a message `name: why`, when `name` looks like a field or a path to one.
fn leading_field(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(": ")?;
    let mut bytes = head.bytes();
    let first = bytes.next()?;
    let named = first.is_ascii_lowercase()
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.[]-".contains(&b));
    named.then_some(head)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            code: code.to_owned(),
            field: self.field().map(str::to_owned),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_the_name_a_refusal_leads_with() {
        let bad = |m: &str| ApiError::BadRequest(m.into());
        assert_eq!(bad("size: 0 is too small").field(), Some("size"));
        assert_eq!(
            bad("options.repl: 4 is out of range").field(),
            Some("options.repl")
        );
        assert_eq!(
            bad("body: secret_kee: unknown field `secret_kee`").field(),
            Some("secret_kee")
        );
        assert_eq!(bad("body: EOF while parsing").field(), Some("body"));
        assert_eq!(bad("No such thing: here").field(), None);
        assert_eq!(bad("a sentence with no field").field(), None);
        let invalid = ClusterError::Invalid {
            field: "name",
            reason: "too long".into(),
        };
        assert_eq!(ApiError::Cluster(invalid).field(), Some("name"));
        assert_eq!(
            ApiError::NotFound("no volume called \"x\"".into()).field(),
            None
        );
    }

    #[test]
    fn the_body_carries_code_message_and_field() {
        let r = ApiError::BadRequest("ttl: 0 s is out of range".into()).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let e = ApiError::MethodNotAllowed("/v1/nodes does not take PATCH".into());
        assert_eq!(
            e.status_and_code(),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        );
    }
}
