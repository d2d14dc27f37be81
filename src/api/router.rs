//! The generic bridge between actix and ruma: one extractor for any ruma
//! `IncomingRequest`, and routes registered from each endpoint's metadata.

use std::cmp::Ordering;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use percent_encoding::percent_decode_str;
use ruma::api::auth_scheme::{
    extract_bearer_or_query_token, AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional,
    NoAccessToken, NoAuthentication,
};
use ruma::api::error::{DeserializationError, FromHttpRequestError};
use ruma::api::path_builder::PathBuilder;
use ruma::api::{IncomingRequest, IncomingRequestExt, Metadata, OutgoingResponse, OutgoingResponseExt};
use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::error::ApiError;
use crate::service::appservices::Appservice;
use crate::service::devices::STAND_IN_DEVICE;
use crate::service::outbox::Destination;
use crate::service::rate_limits::{RateClass, Requester};
use crate::service::{ServiceError, Services};

/// A parsed, authenticated request for endpoint `T`.
pub struct Ruma<T> {
    pub body: T,
    pub sender_user: Option<OwnedUserId>,
    pub sender_device: Option<OwnedDeviceId>,
    pub client_ip: Option<String>,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    /// The appservice behind the request's token (acting as `sender_user`).
    pub appservice: Option<Arc<Appservice>>,
    /// The JSON body as it came (`{}` for an empty one): for the fields a
    /// ruma request type drops, such as a join's custom content.
    pub json_body: Vec<u8>,
}

impl<T> Ruma<T> {
    /// The body's top-level fields other than `known`, in the order sent.
    pub fn extra_fields(&self, known: &[&str]) -> Result<JsonObject, ApiError> {
        let source: &[u8] = if self.json_body.is_empty() {
            b"{}"
        } else {
            &self.json_body
        };
        let mut object: JsonObject = serde_json::from_slice(source)
            .map_err(|_| ApiError::BadJson("the request body must be a JSON object".to_owned()))?;
        object.retain(|key, _| !known.contains(&key.as_str()));
        Ok(object)
    }

    /// The authenticated user; endpoints that require a token always have one.
    pub fn user(&self) -> Result<&UserId, ApiError> {
        self.sender_user.as_deref().ok_or(ApiError::MissingToken)
    }

    /// The server a federation request came from; endpoints that require
    /// its signature always have one.
    pub fn origin(&self) -> Result<&ruma::ServerName, ApiError> {
        self.origin
            .as_deref()
            .ok_or_else(|| ApiError::Forbidden("this endpoint is for other servers".to_owned()))
    }

    /// The device the request was made with, if a real one: not the
    /// stand-in of an appservice that named none.
    pub fn real_device(&self) -> Option<&str> {
        self.sender_device
            .as_deref()
            .map(|d| d.as_str())
            .filter(|d| self.appservice.is_none() || *d != STAND_IN_DEVICE)
    }

    pub fn device(&self) -> Result<&str, ApiError> {
        self.sender_device
            .as_deref()
            .map(|d| d.as_str())
            .ok_or(ApiError::MissingToken)
    }
}

/// How an endpoint authenticates, read off its ruma auth scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRequirement {
    None,
    Optional,
    Required,
    /// Another server's X-Matrix signature.
    Server,
}

pub trait AuthKind {
    const REQUIREMENT: AuthRequirement;
}

macro_rules! auth_kinds {
    ($($scheme:ty => $requirement:ident),+ $(,)?) => {
        $(impl AuthKind for $scheme {
            const REQUIREMENT: AuthRequirement = AuthRequirement::$requirement;
        })+
    };
}

auth_kinds! {
    NoAuthentication => None,
    NoAccessToken => None,
    AccessToken => Required,
    AccessTokenOptional => Optional,
    // Endpoints only an appservice calls; their handlers check that one did
    // (`Ruma::appservice`).
    AppserviceToken => Required,
    AppserviceTokenOptional => Optional,
    ruma::api::federation::authentication::ServerSignatures => Server,
}

/// Collects routes, then registers them on actix grouped by path.
#[derive(Default)]
pub struct Router {
    routes: Vec<(&'static str, Method, actix_web::Route)>,
}

impl Router {
    /// Registers `handler` under every path ruma knows for `R` (stable,
    /// legacy `r0` and unstable), for its method (and HEAD for GET).
    pub fn add<R, F, Fut, Out>(&mut self, handler: F)
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        F: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<Out, ApiError>> + 'static,
        Out: Reply,
    {
        self.add_with(Hooks::default(), handler);
    }

    /// Like [`Router::add`], with `hooks` on the way in or out.
    pub fn add_with<R, F, Fut, Out>(&mut self, hooks: Hooks, handler: F)
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: AuthKind,
        F: Fn(Arc<Services>, Ruma<R>) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<Out, ApiError>> + 'static,
        Out: Reply,
    {
        let method = Method::from_bytes(R::METHOD.as_str().as_bytes()).expect("ruma methods are valid");
        let mut methods = vec![method.clone()];
        if method == Method::GET {
            methods.push(Method::HEAD);
        }
        for full in R::PATH_BUILDER.all_paths() {
            for path in with_empty_state_key(full) {
                let arg_count = full.matches('{').count();
                for method in &methods {
                    let handler = handler.clone();
                    let route = web::route().method(method.clone()).to(
                        move |req: HttpRequest, payload: web::Payload, services: web::Data<Services>| {
                            let handler = handler.clone();
                            async move {
                                let endpoint = Endpoint {
                                    pattern: path,
                                    arg_count,
                                    hooks,
                                };
                                let work =
                                    handle::<R, F, Fut, Out>(handler, services.into_inner(), req, payload, endpoint);
                                match AssertUnwindSafe(work).catch_unwind().await {
                                    Ok(Ok(response)) => response,
                                    Ok(Err(error)) => {
                                        let body_cut_short = matches!(error, ApiError::TooLarge { .. });
                                        error_response(&error, body_cut_short)
                                    }
                                    Err(_) => {
                                        tracing::error!(path, "request handler panicked");
                                        ApiError::Internal("handler panicked".to_owned()).error_response()
                                    }
                                }
                            }
                        },
                    );
                    self.routes.push((path, method.clone(), route));
                }
            }
        }
    }

    /// Registers a handler that reads the request itself (media streams
    /// bodies both ways, which ruma's whole-body types cannot), under each
    /// of `paths` for `method` (and HEAD for GET). Path variables are
    /// actix's `{name}`, read with `req.match_info()`.
    pub fn add_raw<F, Fut>(&mut self, method: Method, paths: &[&'static str], handler: F)
    where
        F: Fn(Arc<Services>, HttpRequest, web::Payload) -> Fut + Clone + 'static,
        Fut: Future<Output = Result<HttpResponse, ApiError>> + 'static,
    {
        let mut methods = vec![method.clone()];
        if method == Method::GET {
            methods.push(Method::HEAD);
        }
        for &path in paths {
            for method in &methods {
                let handler = handler.clone();
                let route = web::route().method(method.clone()).to(
                    move |req: HttpRequest, payload: web::Payload, services: web::Data<Services>| {
                        let has_body = matches!(*req.method(), Method::POST | Method::PUT);
                        let work = handler(services.into_inner(), req, payload);
                        async move {
                            match AssertUnwindSafe(work).catch_unwind().await {
                                Ok(Ok(response)) => response,
                                // The handler may have stopped reading the body anywhere.
                                Ok(Err(error)) => error_response(&error, has_body),
                                Err(_) => {
                                    tracing::error!(path, "request handler panicked");
                                    ApiError::Internal("handler panicked".to_owned()).error_response()
                                }
                            }
                        }
                    },
                );
                self.routes.push((path, method.clone(), route));
            }
        }
    }

    pub fn configure(self, cfg: &mut web::ServiceConfig) {
        let mut routes = self.routes;
        // actix tries services in order: literal segments must win over
        // variables (`/devices/list` before `/devices/{id}`).
        routes.sort_by(|a, b| compare_paths(a.0, b.0));
        let mut by_path: Vec<PathRoutes> = Vec::new();
        for (path, _method, route) in routes {
            match by_path.last_mut() {
                Some((p, same_path)) if *p == path => same_path.push(route),
                _ => by_path.push((path, vec![route])),
            }
        }
        // actix tries a scope's services in turn, each variable route with a
        // regex, so resources are nested by leading segment: one scope per
        // API prefix (`/_matrix/client/v3`), and in it scopes segment by
        // segment (`/rooms`, then `/{room_id}`, then `/send`). A send then
        // runs two regexes (the room ID, then its own route), not one for
        // every room route sorted before it.
        let mut scopes: Vec<(&'static str, Vec<PathRoutes>)> = Vec::new();
        for (path, path_routes) in by_path {
            let (prefix, rest) = split_prefix(path);
            match scopes.last_mut() {
                Some((p, entries)) if *p == prefix => entries.push((rest, path_routes)),
                _ => scopes.push((prefix, vec![(rest, path_routes)])),
            }
        }
        for (prefix, entries) in scopes {
            let scope = nest(entries)
                .into_iter()
                .fold(web::scope(prefix), |scope, node| node.register(scope));
            cfg.service(scope);
        }
    }
}

/// A path (or the rest of one) and its routes, one per method.
type PathRoutes = (&'static str, Vec<actix_web::Route>);

/// A scope of nested routes, or one resource.
enum RouteNode {
    Scope(&'static str, Vec<RouteNode>),
    Resource(actix_web::Resource),
}

impl RouteNode {
    fn register(self, parent: actix_web::Scope) -> actix_web::Scope {
        match self {
            RouteNode::Resource(resource) => parent.service(resource),
            RouteNode::Scope(segment, children) => parent.service(
                children
                    .into_iter()
                    .fold(web::scope(segment), |scope, child| child.register(scope)),
            ),
        }
    }
}

/// Nests sorted `(path, routes)` entries by their first segment. A scope
/// that matches answers alone (a missing route inside it falls to the
/// app's default), so no two siblings may match one path: entries under a
/// literal first segment become a scope (literals sort before variables, so
/// the scope is tried first, as its routes were; matching it is a string
/// comparison), entries under a variable one only when no sibling is left
/// beside them.
fn nest(entries: Vec<PathRoutes>) -> Vec<RouteNode> {
    type Entry = (&'static str, &'static str, Vec<actix_web::Route>);
    let mut groups: Vec<(Option<&'static str>, Vec<Entry>)> = Vec::new();
    for (path, routes) in entries {
        let (segment, inner) = split_first_segment(path);
        match (groups.last_mut(), segment) {
            (Some((Some(last), group)), Some(segment)) if *last == segment => group.push((path, inner, routes)),
            _ => groups.push((segment, vec![(path, inner, routes)])),
        }
    }
    let only_group = groups.len() == 1;
    let mut nodes = Vec::new();
    for (segment, group) in groups {
        let literal = segment.is_some_and(|s| !s.starts_with("/{"));
        let worth_a_scope = group.len() > 1 || group.iter().any(|(_, inner, _)| inner.contains('{'));
        match segment {
            Some(segment) if worth_a_scope && (literal || only_group) => {
                let inner = group.into_iter().map(|(_, inner, routes)| (inner, routes)).collect();
                nodes.push(RouteNode::Scope(segment, nest(inner)));
            }
            _ => nodes.extend(
                group
                    .into_iter()
                    .map(|(path, _, routes)| RouteNode::Resource(resource(path, routes))),
            ),
        }
    }
    nodes
}

/// A resource answering 405 `M_UNRECOGNIZED` to the methods it lacks.
fn resource(path: &'static str, routes: Vec<actix_web::Route>) -> actix_web::Resource {
    routes.into_iter().fold(
        web::resource(path).default_service(web::to(|| async { ApiError::MethodNotAllowed.error_response() })),
        |resource, route| resource.route(route),
    )
}

/// The path, and for one ending in `{state_key}` also the forms with an
/// empty state key: `.../{event_type}/` and `.../{event_type}` (the spec
/// lets clients drop the trailing slash).
fn with_empty_state_key(path: &'static str) -> Vec<&'static str> {
    match path.strip_suffix("/{state_key}") {
        // Leaked once at start-up: route patterns live as long as the server.
        Some(base) => vec![path, Box::leak(format!("{base}/").into_boxed_str()), base],
        None => vec![path],
    }
}

/// `/rooms/{room_id}/send` → (`/rooms`, `/{room_id}/send`). An empty path
/// or a lone `/` is not split.
fn split_first_segment(rest: &'static str) -> (Option<&'static str>, &'static str) {
    if rest.is_empty() || rest == "/" {
        return (None, rest);
    }
    match rest[1..].find('/') {
        Some(at) => {
            let (group, inner) = rest.split_at(at + 1);
            (Some(group), inner)
        }
        None => (Some(rest), ""),
    }
}

/// Splits after the third segment: `/_matrix/client/v3` and `/account/whoami`.
fn split_prefix(path: &'static str) -> (&'static str, &'static str) {
    match path.match_indices('/').nth(3) {
        Some((at, _)) => path.split_at(at),
        None => (path, ""),
    }
}

fn compare_paths(a: &str, b: &str) -> Ordering {
    fn key(path: &str) -> Vec<(bool, &str)> {
        path.split('/').map(|s| (s.starts_with('{'), s)).collect()
    }
    key(a).cmp(&key(b))
}

/// A check of an endpoint's JSON body before ruma reads it, given the body
/// (always an object here) and the path arguments. It may refuse the body
/// where ruma would accept what the spec does not (or panic), or fill in a
/// field the spec lets clients leave out but ruma requires.
pub type BodyCheck = fn(&mut JsonObject, &[&str]) -> Result<(), ApiError>;

/// A change to an endpoint's successful JSON response after ruma wrote it:
/// for a field ruma leaves out when empty that clients read without a
/// check.
pub type ResponseFix = fn(&mut JsonObject);

pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// What an endpoint does beyond ruma's reading and writing.
#[derive(Clone, Copy, Default)]
pub struct Hooks {
    pub body: Option<BodyCheck>,
    pub response: Option<ResponseFix>,
    /// The rate limit each request takes from, once its sender is known.
    pub rate_limit: Option<RateClass>,
}

impl Hooks {
    pub fn body(check: BodyCheck) -> Self {
        Self {
            body: Some(check),
            ..Self::default()
        }
    }

    pub fn response(fix: ResponseFix) -> Self {
        Self {
            response: Some(fix),
            ..Self::default()
        }
    }

    /// These hooks, and `class`'s rate limit.
    pub fn limited(self, class: RateClass) -> Self {
        Self {
            rate_limit: Some(class),
            ..self
        }
    }
}

/// What `handle` needs to know of the route a request came in on.
#[derive(Clone, Copy)]
struct Endpoint {
    pattern: &'static str,
    arg_count: usize,
    hooks: Hooks,
}

/// The endpoints that take a JSON object but may be called with no body at
/// all, read as `{}`: the spec gives logout and forget no body, and
/// clients (matrix-nio among them) send joins, leaves and knocks without
/// one. Every other POST or PUT with an empty body is `M_NOT_JSON`. Paths
/// as ruma writes them, after the API prefix (`/_matrix/client/v3`).
const BODY_MAY_BE_EMPTY: &[&str] = &[
    "/join/{room_id_or_alias}",
    "/rooms/{room_id}/join",
    "/rooms/{room_id}/leave",
    "/rooms/{room_id}/forget",
    "/knock/{room_id_or_alias}",
    "/xyz.amorgan.knock/knock/{room_id_or_alias}",
    "/logout",
    "/logout/all",
];

fn body_may_be_empty(pattern: &'static str) -> bool {
    BODY_MAY_BE_EMPTY.contains(&split_prefix(pattern).1)
}

/// The deepest nesting of objects and arrays a request body may have.
/// serde_json refuses to build a value deeper than 128 levels (and the
/// `json!` macro panics on one); an event wraps its content in a few more
/// levels, and a federation transaction wraps events, so bodies stop well
/// short of that limit and every later re-read of what was stored works.
pub const MAX_JSON_DEPTH: usize = 100;

/// What every JSON body must be before any endpoint reads it: UTF-8 all
/// through (serde_json does not check the strings it skips, so invalid
/// bytes in a field an endpoint ignores would otherwise pass and be
/// stored) and no deeper than [`MAX_JSON_DEPTH`].
fn check_json_body(body: &[u8]) -> Result<(), ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::NotJson("the request body is not UTF-8".to_owned()));
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::BadJson(format!(
                        "the request body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

async fn handle<R, F, Fut, Out>(
    handler: F,
    services: Arc<Services>,
    req: HttpRequest,
    payload: web::Payload,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError>
where
    R: IncomingRequest + Send + 'static,
    R::Authentication: AuthKind,
    F: Fn(Arc<Services>, Ruma<R>) -> Fut,
    Fut: Future<Output = Result<Out, ApiError>>,
    Out: Reply,
{
    let limit = services.config.max_request_size as usize;
    let body = read_body(&req, payload, limit).await?;

    let mut builder = http::Request::builder()
        .method(req.method().as_str())
        .uri(req.uri().to_string());
    for (name, value) in req.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let request = builder
        .body(body)
        .map_err(|e| ApiError::InvalidParam(format!("malformed request: {e}")))?;
    let pattern = endpoint.pattern;
    let mut path_args = path_arguments(pattern, req.uri().path())?;
    // A route without its state key stands for an empty one.
    path_args.resize(endpoint.arg_count, String::new());

    let client_ip = client_address(&services.config, &req);
    let (identity, origin) = if <R::Authentication as AuthKind>::REQUIREMENT == AuthRequirement::Server {
        if !services.config.allow_federation {
            return Err(ApiError::Forbidden("federation is disabled on this server".to_owned()));
        }
        (
            Identity::default(),
            Some(services.federation.authenticate(&request).await?),
        )
    } else {
        (authenticate::<R>(&services, &request, client_ip.clone()).await?, None)
    };
    if let Some(class) = endpoint.hooks.rate_limit {
        let requester = Requester {
            user: identity.user.as_deref(),
            appservice: identity.appservice.as_deref(),
            address: client_ip.as_deref(),
        };
        services.rate_limits.check(&services, class, requester)?;
    }

    let (parts, mut body) = request.into_parts();
    let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
    let takes_body = matches!(parts.method, http::Method::POST | http::Method::PUT);
    if body.is_empty() {
        if takes_body {
            if !body_may_be_empty(pattern) {
                return Err(ApiError::NotJson("this endpoint needs a JSON body".to_owned()));
            }
            body = b"{}".to_vec();
        }
    } else {
        check_json_body(&body)?;
    }
    if let Some(check) = endpoint.hooks.body.filter(|_| takes_body) {
        body = checked_body(check, &body, &args)?;
    }
    // A panic in one of ruma's deserializers is a bug the body checks have
    // missed: still the client's bad input, not a dead worker.
    let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        R::try_from_http_request(http::Request::from_parts(parts, &body[..]), &args)
    }))
    .map_err(|_| {
        tracing::error!(path = pattern, "request parsing panicked; answering as bad input");
        malformed_body(&body, "the request body does not fit this endpoint".to_owned())
    })?
    .map_err(|e| request_error(e, &body))?;

    let response = handler(
        services,
        Ruma {
            body: parsed,
            sender_user: identity.user,
            sender_device: identity.device,
            client_ip,
            origin,
            appservice: identity.appservice,
            json_body: body,
        },
    )
    .await?;
    response.into_http(endpoint.hooks.response)
}

/// What a handler answers: a ruma response, which ruma writes and the
/// endpoint's response hook may fix, or a [`Written`] one.
pub trait Reply {
    fn into_http(self, fix: Option<ResponseFix>) -> Result<HttpResponse, ApiError>;
}

impl<T: OutgoingResponse> Reply for T {
    fn into_http(self, fix: Option<ResponseFix>) -> Result<HttpResponse, ApiError> {
        let response = self
            .try_into_http_response::<BytesMut>()
            .map_err(|e| ApiError::Internal(format!("response serialization: {e}")))?;
        let (parts, mut body) = response.into_parts();
        if let Some(fix) = fix {
            body = fixed_response(fix, &body)?;
        }
        let status = StatusCode::from_u16(parts.status.as_u16()).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut out = HttpResponse::build(status);
        for (name, value) in &parts.headers {
            out.append_header((name.as_str(), value.as_bytes()));
        }
        Ok(out.body(body.freeze()))
    }
}

/// A response the handler wrote itself, for a ruma request type whose
/// response type cannot say what clients need (e.g. /sync's empty
/// sections, which ruma leaves out) without reading its own output back.
pub struct Written(pub HttpResponse);

impl Reply for Written {
    fn into_http(self, _: Option<ResponseFix>) -> Result<HttpResponse, ApiError> {
        Ok(self.0)
    }
}

/// Runs an endpoint's body check on the body as a JSON object and returns
/// the body to parse (as checked, and completed by the check).
fn checked_body(check: BodyCheck, body: &[u8], args: &[&str]) -> Result<Vec<u8>, ApiError> {
    let source: &[u8] = if body.is_empty() { b"{}" } else { body };
    let mut object: JsonObject = match serde_json::from_slice(source) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return Err(ApiError::BadJson("the request body must be a JSON object".to_owned())),
        Err(e) => return Err(malformed_body(source, e.to_string())),
    };
    check(&mut object, args)?;
    serde_json::to_vec(&object).map_err(|e| ApiError::Internal(format!("re-serializing a checked body: {e}")))
}

/// Runs an endpoint's response fix on the JSON object ruma wrote.
fn fixed_response(fix: ResponseFix, body: &[u8]) -> Result<BytesMut, ApiError> {
    let mut object: JsonObject = serde_json::from_slice(body)
        .map_err(|e| ApiError::Internal(format!("reading back a response to fix it: {e}")))?;
    fix(&mut object);
    let bytes =
        serde_json::to_vec(&object).map_err(|e| ApiError::Internal(format!("re-serializing a response: {e}")))?;
    Ok(BytesMut::from(&bytes[..]))
}

/// Reads the whole body, refusing more than `limit` bytes (as announced by
/// Content-Length or as it streams in).
pub(crate) async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::TooLarge { limit: limit as u64 };
    let announced = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error's response; `body_cut_short` when the request body may be
/// partly unread, so the connection is closed after it instead of reused
/// with the rest of that body still in it.
fn error_response(error: &ApiError, body_cut_short: bool) -> HttpResponse {
    let mut response = error.error_response();
    if body_cut_short {
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    response
}

/// The values of the pattern's `{variables}` in the raw path, fully
/// percent-decoded.
fn path_arguments(pattern: &str, raw_path: &str) -> Result<Vec<String>, ApiError> {
    pattern
        .split('/')
        .zip(raw_path.split('/'))
        .filter(|(p, _)| p.starts_with('{'))
        .map(|(_, value)| {
            percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| ApiError::InvalidParam("path parameter is not UTF-8".to_owned()))
        })
        .collect()
}

/// The client's address: the connection's own, or, when that is one of
/// `trusted_proxies`, the one its `Forwarded` / `X-Forwarded-For` header
/// names (the first).
fn client_address(config: &crate::config::Config, req: &HttpRequest) -> Option<String> {
    // An IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d.
    match req.peer_addr().map(|peer| peer.ip().to_canonical()) {
        Some(peer) if !config.trusted_proxies.iter().any(|proxy| proxy.contains(peer)) => Some(peer.to_string()),
        _ => req.connection_info().realip_remote_addr().map(strip_port),
    }
}

fn strip_port(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sock) => sock.ip().to_string(),
        Err(_) => addr.to_owned(),
    }
}

/// Who made a request.
#[derive(Default)]
struct Identity {
    user: Option<OwnedUserId>,
    device: Option<OwnedDeviceId>,
    appservice: Option<Arc<Appservice>>,
}

async fn authenticate<R>(
    services: &Arc<Services>,
    request: &http::Request<Vec<u8>>,
    client_ip: Option<String>,
) -> Result<Identity, ApiError>
where
    R: Metadata,
    R::Authentication: AuthKind,
{
    let requirement = <R::Authentication as AuthKind>::REQUIREMENT;
    if matches!(requirement, AuthRequirement::None | AuthRequirement::Server) {
        return Ok(Identity::default());
    }
    let token = match extract_bearer_or_query_token(request) {
        Ok(Some(token)) => token,
        Ok(None) if requirement == AuthRequirement::Optional => return Ok(Identity::default()),
        Ok(None) | Err(_) => return Err(ApiError::MissingToken),
    };
    if let Some(appservice) = services.appservices.by_as_token(&token) {
        // Registering a user is the one thing an appservice does as a user
        // that does not exist yet (bridges' libraries name the new user in
        // `user_id` for that call too).
        let registering = R::PATH_BUILDER
            .all_paths()
            .any(|path| split_prefix(path).1 == "/register");
        let query = request.uri().query().unwrap_or_default();
        return appservice_identity(services, query, appservice, registering).await;
    }
    let (user, device) = token_owner(services, &token, client_ip).await?;
    guest_may_call(services, &user, || {
        R::PATH_BUILDER
            .all_paths()
            .any(|path| GUEST_ENDPOINTS.contains(&split_prefix(path).1))
    })?;
    Ok(Identity {
        user: Some(user),
        device: Some(device),
        appservice: None,
    })
}

/// An appservice's request acts as its own user, or as the `user_id` of
/// the query if that is in its namespace (the spec's identity
/// assertion), with the query's `device_id` if given. The user must
/// exist unless the request is `registering` one.
async fn appservice_identity(
    services: &Arc<Services>,
    query: &str,
    appservice: Arc<Appservice>,
    registering: bool,
) -> Result<Identity, ApiError> {
    // It answers us, so it is up: what waits for it goes now.
    services
        .outbox
        .retry_now(&Destination::Appservice(appservice.id().to_owned()));
    let asserted = web::Query::<AssertedIdentity>::from_query(query)
        .map_err(|e| ApiError::InvalidParam(format!("query: {e}")))?
        .into_inner();
    let user = match asserted.user_id {
        None => appservice.sender.clone(),
        Some(user_id) => {
            let user = UserId::parse(user_id.as_str()).map_err(|e| ApiError::InvalidParam(format!("user_id: {e}")))?;
            if user.server_name() != services.config.server_name || !appservice.is_user_in_namespace(user.as_str()) {
                return Err(ApiError::NotInNamespace(format!(
                    "{user} is not in the namespaces of appservice {}",
                    appservice.id()
                )));
            }
            if !registering && !services.users.exists(&user)? {
                return Err(ApiError::Forbidden(format!("the appservice has not registered {user}")));
            }
            user
        }
    };
    let device = match asserted.device_id.or(asserted.msc3202_device_id) {
        Some(device) => {
            let lookup = (user.clone(), device.clone());
            services
                .run(move |s| s.devices.get(&lookup.0, &lookup.1).map(|_| ()))
                .await
                .map_err(|_| ApiError::UnknownDevice(format!("{user} has no device {device}")))?;
            OwnedDeviceId::from(device)
        }
        // Acting without a device: the endpoints that need one (to scope
        // transaction IDs, say) see this stand-in, which no real device may
        // be called (so none shares its transaction IDs or is taken for it).
        None => OwnedDeviceId::from(STAND_IN_DEVICE),
    };
    Ok(Identity {
        user: Some(user),
        device: Some(device),
        appservice: Some(appservice),
    })
}

#[derive(serde::Deserialize)]
struct AssertedIdentity {
    user_id: Option<String>,
    device_id: Option<String>,
    #[serde(rename = "org.matrix.msc3202.device_id")]
    msc3202_device_id: Option<String>,
}

/// What a guest account may call (the spec's guest access module, plus
/// `/join/{room}` that clients use for the same join, and the reads a
/// client makes at start: filters, push rules, capabilities). Paths as ruma
/// writes them, after the API prefix. Everything else is
/// `M_GUEST_ACCESS_FORBIDDEN` for a guest.
const GUEST_ENDPOINTS: &[&str] = &[
    "/sync",
    "/rooms/{room_id}/state",
    "/rooms/{room_id}/state/{event_type}/{state_key}",
    "/rooms/{room_id}/state/{event_type}",
    "/rooms/{room_id}/context/{event_id}",
    "/rooms/{room_id}/event/{event_id}",
    "/rooms/{room_id}/messages",
    "/rooms/{room_id}/members",
    "/rooms/{room_id}/join",
    "/join/{room_id_or_alias}",
    "/rooms/{room_id}/leave",
    "/rooms/{room_id}/send/{event_type}/{txn_id}",
    "/sendToDevice/{event_type}/{txn_id}",
    "/profile/{user_id}/displayname",
    "/devices",
    "/devices/{device_id}",
    "/account/whoami",
    "/keys/upload",
    "/keys/query",
    "/keys/claim",
    "/user/{user_id}/filter",
    "/user/{user_id}/filter/{filter_id}",
    "/pushrules/",
    "/capabilities",
    "/logout",
];

/// Raw routes a guest may call: the spec's media downloads, and `/events`.
const GUEST_RAW_PATHS: &[&str] = &[
    "/_matrix/client/v3/events",
    "/_matrix/client/r0/events",
    "/_matrix/client/v1/media/download/{server_name}/{media_id}",
    "/_matrix/client/v1/media/download/{server_name}/{media_id}/",
    "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
    "/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}",
];

/// Refuses a guest on an endpoint not open to guests (`open` is asked
/// only for guests).
fn guest_may_call(services: &Services, user: &UserId, open: impl FnOnce() -> bool) -> Result<(), ApiError> {
    if services.users.is_guest(user.as_str())? && !open() {
        return Err(ServiceError::GuestAccessForbidden.into());
    }
    Ok(())
}

/// Looks a token up right here: two point reads of a small, hot table cost
/// less than the hop to the blocking pool and back that every authenticated
/// request would otherwise pay. Only the last-seen write, at most once a
/// minute per device, goes to the pool.
async fn token_owner(
    services: &Arc<Services>,
    token: &str,
    client_ip: Option<String>,
) -> Result<(OwnedUserId, OwnedDeviceId), ApiError> {
    let owner = services
        .devices
        .token_owner(token, client_ip.as_deref())?
        .ok_or(ApiError::UnknownToken)?;
    if owner.last_seen_due {
        let (user, device) = (owner.user_id.clone(), owner.device_id.clone());
        services
            .run(move |s| s.devices.record_seen(&user, &device, client_ip.as_deref()))
            .await?;
    }
    Ok((owner.user_id, owner.device_id))
}

/// The user and device behind a raw request's access token (the
/// `Authorization: Bearer` header, or the deprecated `access_token` query
/// parameter that older clients still put in media URLs).
pub async fn authenticate_raw(
    services: &Arc<Services>,
    req: &HttpRequest,
) -> Result<(OwnedUserId, OwnedDeviceId), ApiError> {
    let from_header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let token = match from_header {
        Some(token) => token,
        None => web::Query::<TokenQuery>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().access_token)
            .ok_or(ApiError::MissingToken)?,
    };
    let client_ip = client_address(&services.config, req);
    let (user, device) = token_owner(services, &token, client_ip).await?;
    guest_may_call(services, &user, || {
        req.match_pattern()
            .is_some_and(|p| GUEST_RAW_PATHS.contains(&p.as_str()))
    })?;
    Ok((user, device))
}

/// As [`authenticate_raw`], then takes one request of `class` from the
/// user's rate limit.
pub async fn authenticate_raw_limited(
    services: &Arc<Services>,
    req: &HttpRequest,
    class: RateClass,
) -> Result<(OwnedUserId, OwnedDeviceId), ApiError> {
    let (user, device) = authenticate_raw(services, req).await?;
    let address = client_address(&services.config, req);
    let requester = Requester {
        user: Some(&user),
        appservice: None,
        address: address.as_deref(),
    };
    services.rate_limits.check(services, class, requester)?;
    Ok((user, device))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// Bad JSON syntax (or no body at all) is `M_NOT_JSON`; well-formed JSON of
/// the wrong shape is `M_BAD_JSON`; a bad path or query value `M_INVALID_PARAM`.
fn request_error(error: FromHttpRequestError, body: &[u8]) -> ApiError {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => malformed_body(body, e.to_string()),
        FromHttpRequestError::Deserialization(DeserializationError::Utf8(_)) => {
            ApiError::NotJson("the request body is not UTF-8".to_owned())
        }
        FromHttpRequestError::Deserialization(DeserializationError::Query(e))
            if e.to_string().contains("missing field") =>
        {
            ApiError::MissingParam(e.to_string())
        }
        FromHttpRequestError::Deserialization(e) => ApiError::InvalidParam(e.to_string()),
        other => ApiError::BadJson(other.to_string()),
    }
}

fn malformed_body(body: &[u8], detail: String) -> ApiError {
    if body.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        ApiError::NotJson("the request body is not valid JSON".to_owned())
    } else {
        ApiError::BadJson(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_arguments_are_fully_decoded() {
        let args = path_arguments(
            "/_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}",
            "/_matrix/client/v3/rooms/%21room%3Aexample.org/state/m.room.member/%40a%2Fb%3Ax",
        )
        .unwrap();
        assert_eq!(args, vec!["!room:example.org", "m.room.member", "@a/b:x"]);
        assert!(path_arguments("/p/{x}", "/p/%FF").is_err());
    }

    /// A handler that panics answers 500 M_UNKNOWN, and the server goes on.
    #[actix_web::test]
    async fn a_panicking_handler_is_a_500_not_a_dead_server() {
        use actix_web::{test, App};
        use ruma::api::client::discovery::get_supported_versions;

        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            database_path: dir.path().to_owned(),
            ..Default::default()
        };
        let services = Services::open(config).unwrap();

        let mut router = Router::default();
        router.add(|_: Arc<Services>, _: Ruma<get_supported_versions::Request>| async {
            if true {
                panic!("handler bug");
            }
            Ok(get_supported_versions::Response::new(Vec::new()))
        });
        let app = test::init_service(
            App::new()
                .app_data(web::Data::from(services))
                .configure(|cfg| router.configure(cfg)),
        )
        .await;
        for _ in 0..2 {
            let resp = test::call_service(
                &app,
                test::TestRequest::get().uri("/_matrix/client/versions").to_request(),
            )
            .await;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body: serde_json::Value = test::read_body_json(resp).await;
            assert_eq!(body["errcode"], "M_UNKNOWN");
        }
    }

    #[test]
    fn prefixes_are_the_first_three_segments() {
        assert_eq!(
            split_prefix("/_matrix/client/v3/account/whoami"),
            ("/_matrix/client/v3", "/account/whoami")
        );
        assert_eq!(
            split_prefix("/_matrix/client/versions"),
            ("/_matrix/client/versions", "")
        );
        assert_eq!(
            split_prefix("/.well-known/matrix/client"),
            ("/.well-known/matrix/client", "")
        );
    }

    #[test]
    fn literal_segments_sort_before_variables() {
        let mut paths = vec!["/a/{id}", "/a/list", "/a/{id}/x", "/b"];
        paths.sort_by(|a, b| compare_paths(a, b));
        assert_eq!(paths, vec!["/a/list", "/a/{id}", "/a/{id}/x", "/b"]);
    }

    /// Every endpoint listed as taking an empty body is one this server
    /// registers for POST, so the list cannot name a route that moved.
    #[test]
    fn endpoints_that_may_have_no_body_exist() {
        let mut router = Router::default();
        crate::api::client::register_routes(&mut router);
        for listed in BODY_MAY_BE_EMPTY {
            assert!(
                router
                    .routes
                    .iter()
                    .any(|(path, method, _)| *method == Method::POST && split_prefix(path).1 == *listed),
                "{listed} is not a registered POST route"
            );
        }
        assert!(body_may_be_empty("/_matrix/client/v3/join/{room_id_or_alias}"));
        assert!(!body_may_be_empty("/_matrix/client/v3/createRoom"));
    }

    /// Every endpoint open to guests is a registered route, so the lists
    /// cannot name one that moved or never existed.
    #[test]
    fn endpoints_open_to_guests_exist() {
        let mut router = Router::default();
        crate::api::client::register_routes(&mut router);
        for listed in GUEST_ENDPOINTS {
            assert!(
                router.routes.iter().any(|(path, _, _)| split_prefix(path).1 == *listed),
                "{listed} is not a registered route"
            );
        }
        for listed in GUEST_RAW_PATHS {
            assert!(
                router.routes.iter().any(|(path, _, _)| path == listed),
                "{listed} is not a registered route"
            );
        }
    }

    #[test]
    fn bodies_must_be_utf8_and_shallow() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        assert!(check_json_body(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        assert!(matches!(
            check_json_body(nested(MAX_JSON_DEPTH + 1).as_bytes()),
            Err(ApiError::BadJson(_))
        ));
        // Brackets inside strings, escaped quotes included, do not count.
        let in_strings = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(200), "{".repeat(200));
        assert!(check_json_body(in_strings.as_bytes()).is_ok());
        assert!(matches!(
            check_json_body(b"{\"a\": \"\xff\"}"),
            Err(ApiError::NotJson(_))
        ));
    }

    #[test]
    fn body_errors_are_classified() {
        let json_err = || {
            FromHttpRequestError::Deserialization(DeserializationError::Json(
                serde_json::from_slice::<u8>(b"x").unwrap_err(),
            ))
        };
        assert!(matches!(request_error(json_err(), b""), ApiError::NotJson(_)));
        assert!(matches!(request_error(json_err(), b"{nope"), ApiError::NotJson(_)));
        assert!(matches!(request_error(json_err(), b"[1,2]"), ApiError::BadJson(_)));
    }
}
