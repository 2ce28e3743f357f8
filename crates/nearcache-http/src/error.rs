//! Errors as clients see them.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use nearcache_pg::{RepoError, ValidationError};

/// An error answer: a status and a JSON body `{"error": code, "message": text}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 401: authentication failed, for whatever reason (never said).
    #[error("authentication required")]
    Unauthorized,
    /// 404: no such route or resource.
    #[error("not found")]
    NotFound,
    /// 405: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the change conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is too large.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not JSON.
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// 503: the database is unreachable.
    #[error("service temporarily unavailable")]
    Unavailable,
    /// 503: the server is shutting down and the request did not finish in time.
    #[error("the server is shutting down; try again")]
    ShuttingDown,
    /// 500: anything else; the detail is logged, not sent.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable => "unavailable",
            ApiError::ShuttingDown => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        let mut response = crate::routes::json(self.status(), &body);
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }

    /// The answer to a repository error, logging what the client is not told.
    pub fn from_repo(e: &RepoError) -> Self {
        match e {
            RepoError::NotFound => ApiError::NotFound,
            RepoError::Conflict(_) => ApiError::Conflict("email is already taken".into()),
            RepoError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                ApiError::Unavailable
            }
            RepoError::Other(source) => {
                tracing::error!(error = ?source, "database error");
                ApiError::Internal
            }
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}
