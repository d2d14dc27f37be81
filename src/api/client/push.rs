//! Push rules, pushers and the notification history.

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use ruma::api::client::push::{
    delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
    get_pushrules_all, set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled, PushRule,
};
use ruma::push::{AnyPushRuleRef, RuleKind, Ruleset};
use ruma::UserId;

use crate::api::router::{authenticate_raw, Hooks, JsonObject};
use crate::api::{ApiError, Router, Ruma};
use crate::service::{ServiceError, ServiceResult, Services};

pub fn register_routes(router: &mut Router) {
    router.add_with(Hooks::response(list_every_kind), all_rules);
    // Raw: ruma has no request type for one kind's list.
    router.add_raw(
        Method::GET,
        &[
            "/_matrix/client/v3/pushrules/global/{kind}",
            "/_matrix/client/v3/pushrules/global/{kind}/",
            "/_matrix/client/r0/pushrules/global/{kind}",
            "/_matrix/client/r0/pushrules/global/{kind}/",
        ],
        rules_of_kind,
    );
    router.add(rule);
    router.add_with(Hooks::body(conditions_default_to_none), set_rule);
    router.add(delete_rule);
    router.add(rule_enabled);
    router.add(set_rule_enabled);
    router.add(rule_actions);
    router.add(set_rule_actions);
    router.add(pushers);
    router.add(notifications);
    router.add_with(Hooks::body(pusher_fields_present), set_pusher);
}

fn not_found() -> ServiceError {
    ServiceError::NotFound("no push rule with this ID".to_owned())
}

/// The kinds of rule, as the spec names them in paths and rulesets.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// A kind the spec does not define is the client's mistake, not a missing
/// rule (ruma reads any name as a custom kind).
fn known_kind(kind: &RuleKind) -> Result<(), ApiError> {
    if KINDS.contains(&kind.as_str()) {
        Ok(())
    } else {
        Err(ApiError::InvalidParam(format!("{kind} is not a kind of push rule")))
    }
}

/// Every kind in the ruleset, also when it holds no rule (ruma leaves
/// empty kinds out; clients index them).
fn list_every_kind(response: &mut JsonObject) {
    if let Some(serde_json::Value::Object(global)) = response.get_mut("global") {
        for kind in KINDS {
            global
                .entry(kind)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        }
    }
}

/// `GET /pushrules/global/{kind}/`: the rules of one kind, in order.
async fn rules_of_kind(services: Arc<Services>, req: HttpRequest, _: web::Payload) -> Result<HttpResponse, ApiError> {
    let (user, _) = authenticate_raw(&services, &req).await?;
    let kind = req.match_info().get("kind").unwrap_or_default().to_owned();
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::InvalidParam(format!("{kind} is not a kind of push rule")));
    }
    let rules = services.run(move |s| s.push.ruleset(s, &user)).await?;
    let mut all =
        serde_json::to_value(Ruleset::clone(&rules)).map_err(|e| ApiError::Internal(format!("push rules: {e}")))?;
    let listed = all
        .get_mut(&kind)
        .map(serde_json::Value::take)
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()));
    Ok(HttpResponse::Ok().json(listed))
}

/// Reads a rule of the user's rules with `read`.
async fn read_rule<T: Send + 'static>(
    services: Arc<Services>,
    user: &UserId,
    kind: RuleKind,
    rule_id: String,
    read: impl FnOnce(AnyPushRuleRef<'_>) -> T + Send + 'static,
) -> Result<T, ApiError> {
    known_kind(&kind)?;
    let user = user.to_owned();
    Ok(services
        .run(move |s| {
            let rules = s.push.ruleset(s, &user)?;
            let rule = rules.get(kind, &rule_id).ok_or_else(not_found)?;
            Ok(read(rule))
        })
        .await?)
}

/// Changes the user's rules with `change` and stores them.
async fn change_rules(
    services: Arc<Services>,
    user: &UserId,
    change: impl FnOnce(&mut Ruleset) -> ServiceResult<()> + Send + 'static,
) -> Result<(), ApiError> {
    let user = user.to_owned();
    Ok(services.run(move |s| s.push.change_ruleset(s, &user, change)).await?)
}

async fn all_rules(
    services: Arc<Services>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let rules = services.run(move |s| s.push.ruleset(s, &user)).await?;
    Ok(get_pushrules_all::v3::Response::new(Ruleset::clone(&rules)))
}

async fn rule(
    services: Arc<Services>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let rule = read_rule(services, &user, body.kind, body.rule_id, |r| {
        PushRule::from(r.to_owned())
    })
    .await?;
    Ok(get_pushrule::v3::Response::new(rule))
}

/// An override or underride rule sent without `conditions` has none: it
/// always matches (the spec requires only `actions`; ruma requires both).
fn conditions_default_to_none(body: &mut JsonObject, args: &[&str]) -> Result<(), ApiError> {
    if matches!(args.first(), Some(&("override" | "underride"))) && !body.contains_key("conditions") {
        body.insert("conditions".to_owned(), serde_json::Value::Array(Vec::new()));
    }
    Ok(())
}

async fn set_rule(
    services: Arc<Services>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response, ApiError> {
    use ruma::push::InsertPushRuleError;
    let user = req.user()?.to_owned();
    let body = req.body;
    change_rules(services, &user, move |rules| {
        let (after, before) = (body.after, body.before);
        rules
            .insert(body.rule, after.as_deref(), before.as_deref())
            .map_err(|e| match e {
                // The spec's answer for a missing anchor: 400 M_UNKNOWN.
                InsertPushRuleError::UnknownRuleId => ServiceError::BadRequest(format!(
                    "before/after rule not found: {}",
                    before.as_deref().or(after.as_deref()).unwrap_or_default()
                )),
                other => ServiceError::InvalidParam(format!("cannot insert this rule: {other}")),
            })
    })
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete_rule(
    services: Arc<Services>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response, ApiError> {
    use ruma::push::RemovePushRuleError;
    let user = req.user()?.to_owned();
    let body = req.body;
    known_kind(&body.kind)?;
    change_rules(services, &user, move |rules| {
        rules.remove(body.kind, &body.rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => {
                ServiceError::BadJson("the server's default rules cannot be deleted".to_owned())
            }
            _ => not_found(),
        })
    })
    .await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn rule_enabled(
    services: Arc<Services>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let enabled = read_rule(services, &user, body.kind, body.rule_id, |r| r.enabled()).await?;
    Ok(get_pushrule_enabled::v3::Response::new(enabled))
}

async fn set_rule_enabled(
    services: Arc<Services>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    known_kind(&body.kind)?;
    change_rules(services, &user, move |rules| {
        rules
            .set_enabled(body.kind, &body.rule_id, body.enabled)
            .map_err(|_| not_found())
    })
    .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn rule_actions(
    services: Arc<Services>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    let actions = read_rule(services, &user, body.kind, body.rule_id, |r| r.actions().to_vec()).await?;
    Ok(get_pushrule_actions::v3::Response::new(actions))
}

async fn set_rule_actions(
    services: Arc<Services>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let body = req.body;
    known_kind(&body.kind)?;
    change_rules(services, &user, move |rules| {
        rules
            .set_actions(body.kind, &body.rule_id, body.actions)
            .map_err(|_| not_found())
    })
    .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

async fn pushers(
    services: Arc<Services>,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let pushers = services.run(move |s| s.pushers.list(&user)).await?;
    Ok(get_pushers::v3::Response::new(pushers))
}

/// The spec's `M_MISSING_PARAM` for a pusher set without a field it needs
/// (ruma would only say the JSON does not fit).
fn pusher_fields_present(body: &mut JsonObject, _: &[&str]) -> Result<(), ApiError> {
    let mut needed = vec!["kind", "app_id", "pushkey"];
    if body.get("kind").is_some_and(|k| !k.is_null()) {
        needed.extend(["app_display_name", "device_display_name", "lang", "data"]);
    }
    let missing: Vec<&str> = needed.into_iter().filter(|f| !body.contains_key(*f)).collect();
    if !missing.is_empty() {
        return Err(ApiError::MissingParam(format!(
            "missing parameters: {}",
            missing.join(", ")
        )));
    }
    if body.get("kind").and_then(|k| k.as_str()) == Some("http")
        && body.get("data").and_then(|d| d.get("url")).is_none()
    {
        return Err(ApiError::MissingParam(
            "data.url is required for an http pusher".to_owned(),
        ));
    }
    Ok(())
}

/// `POST /pushers/set`: the pusher belongs to the requesting device.
async fn set_pusher(
    services: Arc<Services>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response, ApiError> {
    let user = req.user()?.to_owned();
    let device = req.device().ok().map(str::to_owned);
    let action = req.body.action;
    services
        .run(move |s| s.pushers.set(&user, device.as_deref(), action))
        .await?;
    Ok(set_pusher::v3::Response::new())
}

/// `GET /notifications`: the events that notified the user, newest first.
async fn notifications(
    services: Arc<Services>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response, ApiError> {
    use get_notifications::v3::{Notification, Response};
    let user = req.user()?.to_owned();
    let device = req.device()?.to_owned();
    let body = req.body;
    let limit = body.limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    // The spec defines only `highlight`; anything else filters nothing.
    let highlights_only = body.only.as_deref() == Some("highlight");
    let page = services
        .run(move |s| {
            s.push
                .notifications(s, &user, &device, body.from.as_deref(), limit, highlights_only)
        })
        .await?;
    let listed = page
        .notifications
        .into_iter()
        .map(|n| {
            let ts = ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(n.ts));
            Notification::new(n.actions, ruma::serde::Raw::from_json(n.event), n.read, n.room_id, ts)
        })
        .collect();
    let mut response = Response::new(listed);
    response.next_token = page.next_token;
    Ok(response)
}
