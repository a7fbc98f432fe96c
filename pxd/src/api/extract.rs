//! Extractors that refuse like every other handler: a body, path or query the API cannot
//! read is a 400 `bad_request` in the error body, never axum's plain-text answer.

use super::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::Json;

/// A JSON request body. axum's own `Json` answers a body it cannot read with a plain-text
/// 415/422; this answers 400 `bad_request` with serde's words, led by the path of the unknown,
/// missing or mistyped field, like every other refusal.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::BadRequest(format!("body: {}", body_error(&e)))),
        }
    }
}

fn body_error(e: &JsonRejection) -> String {
    use std::error::Error;
    let serde = match e {
        JsonRejection::JsonDataError(d) => d.source(),
        JsonRejection::JsonSyntaxError(d) => d.source(),
        _ => None,
    };
    serde.map_or_else(|| e.body_text(), ToString::to_string)
}

/// A path parameter; one that does not decode (bad percent-encoding, not UTF-8) is refused.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::BadRequest(format!("path: {}", e.body_text())))
    }
}

/// A query string, refused by name when it has an unknown or mistyped parameter.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))
    }
}
