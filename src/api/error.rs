//! The HTTP layer's one error type and its one mapping to Matrix errors.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::service::appservices::AppserviceFailure;
use crate::service::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unrecognized request")]
    Unrecognized,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("request body is larger than the server accepts ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("missing access token")]
    MissingToken,
    #[error("unknown access token")]
    UnknownToken,
    #[error("{0}")]
    Forbidden(String),
    /// An appservice acting as a user outside its namespaces.
    #[error("{0}")]
    NotInNamespace(String),
    #[error("{0}")]
    UnknownDevice(String),
    /// `m.login.application_service` from an appservice that manages its
    /// users' devices itself (MSC4190).
    #[error("{0}")]
    AppserviceLoginUnsupported(String),
    #[error("internal server error")]
    Internal(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    /// The HTTP status and Matrix `errcode` for this error.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ServiceError as S;
        match self {
            ApiError::Unrecognized => (StatusCode::NOT_FOUND, "M_UNRECOGNIZED"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED"),
            ApiError::NotJson(_) => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            ApiError::InvalidParam(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            ApiError::MissingParam(_) => (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            ApiError::MissingToken => (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
            ApiError::UnknownToken => (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            ApiError::NotInNamespace(_) => (StatusCode::FORBIDDEN, "M_EXCLUSIVE"),
            ApiError::UnknownDevice(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN_DEVICE"),
            ApiError::AppserviceLoginUnsupported(_) => (StatusCode::BAD_REQUEST, "M_APPSERVICE_LOGIN_UNSUPPORTED"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
            ApiError::Service(e) => match e {
                S::Database(_) | S::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
                S::Forbidden(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN"),
                S::NotFound(_) => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
                S::InvalidParam(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
                S::BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
                S::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
                S::ServerControlled(_) => (StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON"),
                S::InvalidUsername(_) => (StatusCode::BAD_REQUEST, "M_INVALID_USERNAME"),
                S::UserInUse => (StatusCode::BAD_REQUEST, "M_USER_IN_USE"),
                S::UserDeactivated => (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED"),
                S::GuestAccessForbidden => (StatusCode::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
                S::ThreepidDenied(_) => (StatusCode::FORBIDDEN, "M_THREEPID_DENIED"),
                S::AuthRequired(_) => (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"),
                S::UnsupportedRoomVersion(_) => (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
                S::BadRequest(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN"),
                S::RoomInUse(_) => (StatusCode::BAD_REQUEST, "M_ROOM_IN_USE"),
                S::AliasExists => (StatusCode::CONFLICT, "M_UNKNOWN"),
                S::BadAlias(_) => (StatusCode::BAD_REQUEST, "M_BAD_ALIAS"),
                S::LimitExceeded(_) | S::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
                S::WrongRoomKeysVersion(_) => (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
                S::CannotOverwriteMedia => (StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
                S::NotYetUploaded => (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
                S::RemoteFailed(_) => (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
                // What Synapse answers for remote media over its limit.
                S::RemoteTooLarge(_) => (StatusCode::BAD_GATEWAY, "M_TOO_LARGE"),
                S::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
                S::IncompatibleRoomVersion(_) => (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
                S::UnableToAuthoriseJoin(_) => (StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN"),
                S::UnableToGrantJoin(_) => (StatusCode::BAD_REQUEST, "M_UNABLE_TO_GRANT_JOIN"),
                S::Exclusive(_) => (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"),
                S::UnknownPos(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS"),
                S::Appservice(failure) => match failure {
                    AppserviceFailure::UrlNotSet => (StatusCode::BAD_REQUEST, "M_URL_NOT_SET"),
                    AppserviceFailure::BadStatus { .. } => (StatusCode::BAD_GATEWAY, "M_BAD_STATUS"),
                    AppserviceFailure::ConnectionFailed(_) => (StatusCode::BAD_GATEWAY, "M_CONNECTION_FAILED"),
                    AppserviceFailure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "M_CONNECTION_TIMEOUT"),
                },
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, errcode) = self.status_and_code();
        let body = match self {
            // The UIA body carries the flows; its errcode, if any, is inside.
            // `params` and `completed` even when empty, as the spec's
            // examples and Synapse write them: clients index both.
            ApiError::Service(ServiceError::AuthRequired(info)) => {
                let mut body = serde_json::to_value(info).unwrap_or_else(|_| json!({}));
                if let Some(object) = body.as_object_mut() {
                    object.entry("params").or_insert_with(|| json!({}));
                    object.entry("completed").or_insert_with(|| json!([]));
                }
                body
            }
            ApiError::UnknownToken => json!({"errcode": errcode, "error": self.to_string(), "soft_logout": false}),
            ApiError::Service(ServiceError::Busy { retry_after_ms, .. }) => {
                let body = json!({"errcode": errcode, "error": self.to_string(), "retry_after_ms": retry_after_ms});
                // Retry-After is in whole seconds, rounded up.
                let seconds = retry_after_ms.div_ceil(1000).max(1);
                return HttpResponse::build(status)
                    .insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()))
                    .json(body);
            }
            ApiError::Service(ServiceError::IncompatibleRoomVersion(version)) => {
                json!({"errcode": errcode, "error": self.to_string(), "room_version": version})
            }
            ApiError::Service(ServiceError::Appservice(AppserviceFailure::BadStatus { status, body })) => {
                json!({"errcode": errcode, "error": self.to_string(), "status": status, "body": body})
            }
            ApiError::Service(ServiceError::WrongRoomKeysVersion(current)) => {
                json!({"errcode": errcode, "error": self.to_string(), "current_version": current})
            }
            ApiError::Internal(detail) | ApiError::Service(ServiceError::Internal(detail)) => {
                tracing::error!(%detail, "internal error");
                json!({"errcode": errcode, "error": "internal server error"})
            }
            ApiError::Service(ServiceError::Database(e)) => {
                tracing::error!(error = %e, "database error");
                json!({"errcode": errcode, "error": "internal server error"})
            }
            _ => json!({"errcode": errcode, "error": self.to_string()}),
        };
        HttpResponse::build(status).json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_of(e: ApiError) -> (u16, serde_json::Value) {
        let resp = e.error_response();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().try_into_bytes().unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn each_error_maps_to_its_status_and_code() {
        let cases = [
            (ApiError::Unrecognized, 404, "M_UNRECOGNIZED"),
            (ApiError::MethodNotAllowed, 405, "M_UNRECOGNIZED"),
            (ApiError::NotJson("x".into()), 400, "M_NOT_JSON"),
            (ApiError::BadJson("x".into()), 400, "M_BAD_JSON"),
            (ApiError::TooLarge { limit: 1 }, 413, "M_TOO_LARGE"),
            (ApiError::MissingToken, 401, "M_MISSING_TOKEN"),
            (ApiError::UnknownToken, 401, "M_UNKNOWN_TOKEN"),
            (ServiceError::UserInUse.into(), 400, "M_USER_IN_USE"),
            (ServiceError::NotFound("x".into()).into(), 404, "M_NOT_FOUND"),
            (ServiceError::UserDeactivated.into(), 403, "M_USER_DEACTIVATED"),
            (
                ServiceError::GuestAccessForbidden.into(),
                403,
                "M_GUEST_ACCESS_FORBIDDEN",
            ),
            (
                ServiceError::InvalidUsername("x".into()).into(),
                400,
                "M_INVALID_USERNAME",
            ),
            (
                ServiceError::UnableToAuthoriseJoin("x".into()).into(),
                400,
                "M_UNABLE_TO_AUTHORISE_JOIN",
            ),
            (
                ServiceError::UnableToGrantJoin("x".into()).into(),
                400,
                "M_UNABLE_TO_GRANT_JOIN",
            ),
        ];
        for (error, status, code) in cases {
            let (got_status, body) = body_of(error);
            assert_eq!((got_status, body["errcode"].as_str().unwrap()), (status, code));
            assert!(body["error"].is_string());
        }
    }

    #[test]
    fn busy_says_when_to_retry() {
        let error: ApiError = ServiceError::Busy {
            what: "too many logins".into(),
            retry_after_ms: 1500,
        }
        .into();
        let resp = error.error_response();
        assert_eq!(resp.headers().get(actix_web::http::header::RETRY_AFTER).unwrap(), "2");
        let (status, body) = body_of(error);
        assert_eq!((status, body["errcode"].as_str().unwrap()), (429, "M_LIMIT_EXCEEDED"));
        assert_eq!(body["retry_after_ms"], 1500);
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let (status, body) = body_of(ServiceError::Internal("secret path /x".into()).into());
        assert_eq!(status, 500);
        assert_eq!(body["errcode"], "M_UNKNOWN");
        assert!(!body["error"].as_str().unwrap().contains("secret"));
    }

    #[test]
    fn uia_error_carries_flows() {
        use ruma::api::client::uiaa::{AuthFlow, AuthType, UiaaInfo};
        let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![AuthType::Dummy])]);
        info.session = Some("s".into());
        let (status, body) = body_of(ServiceError::AuthRequired(Box::new(info)).into());
        assert_eq!(status, 401);
        assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy");
        assert_eq!(body["session"], "s");
        assert_eq!(body["params"], json!({}));
        assert_eq!(body["completed"], json!([]));
    }
}
