//! HTTP: routes, the actix↔ruma bridge, and the mapping of errors to Matrix
//! errors. Handlers turn a request into service calls and a response; they
//! never touch storage.

pub mod admin;
pub mod client;
mod directory;
pub mod error;
pub mod federation;
pub mod router;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

pub use error::ApiError;
pub use router::{Router, Ruma};

/// Registers every endpoint.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut router = Router::default();
    client::register_routes(&mut router);
    federation::register_routes(&mut router);
    admin::register_routes(&mut router);
    router.configure(cfg);
}

/// Any path no endpoint claims.
pub async fn unrecognized() -> HttpResponse {
    ApiError::Unrecognized.error_response()
}

/// CORS on every response, and a 204 for every preflight: browser clients
/// need both.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == actix_web::http::Method::OPTIONS {
        let mut response = HttpResponse::NoContent().finish();
        add_cors_headers(response.headers_mut());
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    add_cors_headers(response.headers_mut());
    Ok(response.map_into_left_body())
}

/// Counts and times each answered request by its route's pattern, when
/// metrics are on.
pub async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let response = next.call(req).await?;
    let services = response.request().app_data::<web::Data<crate::service::Services>>();
    if let Some(metrics) = services.and_then(|s| s.metrics.as_ref()) {
        let request = response.request();
        let endpoint = request.match_pattern().unwrap_or_else(|| "unrecognized".to_owned());
        metrics.observe_request(
            &endpoint,
            request.method().as_str(),
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(response)
}

fn add_cors_headers(headers: &mut header::HeaderMap) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization, Accept, Origin"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
}
