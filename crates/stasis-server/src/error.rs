//! API errors: a status plus the hypeman error body `{code, message, details}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One more specific problem inside an error.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `range_not_satisfiable`, `too_many_ingests`, `method_not_allowed`,
    /// `path_refused`, `internal`.
    pub code: String,
    /// For people.
    pub message: String,
    /// More specific problems (may be empty).
    pub details: Vec<ErrorDetail>,
}

/// The message of every path refusal ([`ApiError::refused`]).
pub const REFUSED: &str = "payload path refused";

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<ErrorDetail>,
    /// `Content-Range: bytes */SIZE` of a 416.
    range_size: Option<u64>,
}

impl ApiError {
    /// An error with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            range_size: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 413: the body is over the server's limit.
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this server accepts",
        )
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 for a snapshot id: the same whether it does not exist or is another
    /// tenant's.
    pub fn no_snapshot(id: &str) -> Self {
        Self::not_found(format!("snapshot {id:?} not found"))
    }

    /// 404 for an instance (VM) id or name, whether missing or another tenant's.
    pub fn no_instance(id: &str) -> Self {
        Self::not_found(format!("instance {id:?} not found"))
    }

    /// The one answer to every payload path a caller may not use, whatever the reason
    /// (missing, outside its roots, a link out, not a regular file, unreadable, an
    /// image naming another file): 403 `path_refused`, always with the same message, so
    /// nothing about the host's files leaks. The reason goes to the server's log only.
    pub fn refused(reason: &str) -> Self {
        tracing::warn!("payload path refused: {reason}");
        Self::new(StatusCode::FORBIDDEN, "path_refused", REFUSED)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 416 for a payload of `size` bytes.
    pub fn range_not_satisfiable(size: u64) -> Self {
        let mut e = Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("no requested range overlaps the payload's {size} bytes"),
        );
        e.range_size = Some(size);
        e
    }

    /// 500: a failure of the server or its storage, never of the client's input.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// With a detail.
    #[must_use]
    pub fn detail(mut self, code: &str, message: impl Into<String>) -> Self {
        self.details.push(ErrorDetail {
            code: code.to_string(),
            message: message.into(),
        });
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            details: self.details,
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"stasis\""),
            );
        }
        if let Some(size) = self.range_size
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}

impl From<stasis_repo::Error> for ApiError {
    fn from(e: stasis_repo::Error) -> Self {
        use stasis_repo::ErrorKind as K;
        let msg = e.to_string();
        if let stasis_repo::Error::Hook(why) = &e {
            // The hook's output is the operator's (host paths, tools): logged, not sent.
            tracing::warn!("{why}");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hook_failed",
                "the instance's hook failed, so nothing was done or recorded (the server's log says why)",
            );
        }
        match e.kind() {
            K::Refused => ApiError::refused(&msg),
            K::InvalidInput => ApiError::bad_request(msg),
            K::NotFound => ApiError::not_found(msg),
            K::Conflict => ApiError::conflict(msg),
            _ => ApiError::internal(msg),
        }
    }
}

impl From<stasis_catalog::Error> for ApiError {
    fn from(e: stasis_catalog::Error) -> Self {
        stasis_repo::Error::from(e).into()
    }
}

impl From<stasis_store::Error> for ApiError {
    fn from(e: stasis_store::Error) -> Self {
        stasis_repo::Error::from(e).into()
    }
}
