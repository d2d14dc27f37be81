//! Each recipient's push rules, as `notify` evaluates them for every local
//! member of a room on every event.
//!
//! Most users never change their rules: theirs are the server defaults,
//! which name the user in three rules only (`.m.rule.invite_for_me`,
//! `.m.rule.is_user_mention` and the legacy `.m.rule.contains_user_name`).
//! Such users are remembered by ID alone and evaluated against one shared
//! copy of the defaults with their own three rules in place, so a room of
//! thousands costs no ruleset per member per event. Rules a user changed
//! are parsed once and kept, up to [`CACHED_CHANGED`] users' worth.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::push::{AnyPushRuleRef, ConditionalPushRule, PatternedPushRule, Ruleset};
use ruma::{OwnedUserId, UserId};
use serde_json::Value as JsonValue;

/// Changed rulesets kept in memory at most (a parsed ruleset is a few KiB);
/// the map starts over when full.
const CACHED_CHANGED: usize = 256;

/// Users known to have the defaults, kept at most (a user ID each); the
/// set starts over when full.
const CACHED_DEFAULT_USERS: usize = 16_384;

const INVITE_FOR_ME: &str = ".m.rule.invite_for_me";
const IS_USER_MENTION: &str = ".m.rule.is_user_mention";
pub(super) const LEGACY_DISPLAY_NAME: &str = ".m.rule.contains_display_name";
pub(super) const LEGACY_USER_NAME: &str = ".m.rule.contains_user_name";
pub(super) const LEGACY_ROOM_NOTIF: &str = ".m.rule.roomnotif";

/// Whether a server-default rule is one of the legacy mention rules.
pub(super) fn is_legacy_mention_rule(rule_id: &str) -> bool {
    matches!(rule_id, LEGACY_DISPLAY_NAME | LEGACY_USER_NAME | LEGACY_ROOM_NOTIF)
}

/// The server-default rules: ruma's, which follow the newest spec, and the
/// three that matched mentions in an event's `body` before `m.mentions`.
/// Spec versions up to 1.16 list them (deprecated); older clients, and
/// matrix-js-sdk's checks, expect them. As the spec asked while it listed
/// them, they do not apply to an event with `m.mentions` (see `notify`).
pub fn server_default_rules(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    let rule = |json: JsonValue| -> ConditionalPushRule {
        serde_json::from_value(json).expect("the spec's legacy rules are valid push rules")
    };
    let highlight_with_sound =
        serde_json::json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]);
    let display_name = rule(serde_json::json!({
        "rule_id": LEGACY_DISPLAY_NAME, "default": true, "enabled": true,
        "conditions": [{"kind": "contains_display_name"}],
        "actions": highlight_with_sound,
    }));
    let room_notif = rule(serde_json::json!({
        "rule_id": LEGACY_ROOM_NOTIF, "default": true, "enabled": true,
        "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "@room"},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        "actions": ["notify", {"set_tweak": "highlight"}],
    }));
    // In the spec's order: each right after the rule that replaced it.
    let after = |rules: &Ruleset, id: &str| {
        rules
            .override_
            .iter()
            .position(|r| r.rule_id == id)
            .map_or(rules.override_.len(), |i| i + 1)
    };
    let at = after(&rules, IS_USER_MENTION);
    rules.override_.shift_insert(at, display_name);
    let at = after(&rules, ".m.rule.is_room_mention");
    rules.override_.shift_insert(at, room_notif);
    let user_name: PatternedPushRule = serde_json::from_value(serde_json::json!({
        "rule_id": LEGACY_USER_NAME, "default": true, "enabled": true,
        "pattern": user.localpart(),
        "actions": highlight_with_sound,
    }))
    .expect("the spec's legacy rules are valid push rules");
    rules.content.insert(user_name);
    rules
}

/// The server defaults once, for every user who has them: the rules that
/// name a user are swapped for the recipient's own (see [`OwnRules`]).
pub(super) struct SharedDefaults {
    rules: Ruleset,
    user_name: PatternedPushRule,
}

impl SharedDefaults {
    pub(super) fn new() -> Self {
        // Never evaluated as it is: each rule naming this user is replaced.
        let nobody = UserId::parse("@nobody:invalid").expect("a valid user ID");
        let rules = server_default_rules(&nobody);
        let user_name = rules
            .content
            .iter()
            .find(|r| r.rule_id == LEGACY_USER_NAME)
            .cloned()
            .expect("the defaults have the legacy user name rule");
        Self { rules, user_name }
    }
}

/// The default rules that name one user.
pub(super) struct OwnRules {
    invite_for_me: ConditionalPushRule,
    is_user_mention: ConditionalPushRule,
    user_name: PatternedPushRule,
}

impl OwnRules {
    pub(super) fn new(user: &UserId, defaults: &SharedDefaults) -> Self {
        let mut user_name = defaults.user_name.clone();
        user_name.pattern = user.localpart().to_owned();
        Self {
            invite_for_me: ConditionalPushRule::invite_for_me(user),
            is_user_mention: ConditionalPushRule::is_user_mention(user),
            user_name,
        }
    }

    /// `rule` of the shared defaults, or this user's own in its place.
    fn in_place_of<'a>(&'a self, rule: AnyPushRuleRef<'a>) -> AnyPushRuleRef<'a> {
        match rule {
            AnyPushRuleRef::Override(r) if r.rule_id == INVITE_FOR_ME => AnyPushRuleRef::Override(&self.invite_for_me),
            AnyPushRuleRef::Override(r) if r.rule_id == IS_USER_MENTION => {
                AnyPushRuleRef::Override(&self.is_user_mention)
            }
            AnyPushRuleRef::Content(r) if r.rule_id == LEGACY_USER_NAME => AnyPushRuleRef::Content(&self.user_name),
            other => other,
        }
    }
}

/// One recipient's rules for an event.
pub(super) enum RecipientRules {
    /// The server defaults, with the rules that name them.
    Defaults(Box<OwnRules>),
    /// Rules they changed.
    Changed(Arc<Ruleset>),
}

impl RecipientRules {
    /// The rules in the order they are evaluated.
    pub(super) fn iter<'a>(&'a self, defaults: &'a SharedDefaults) -> impl Iterator<Item = AnyPushRuleRef<'a>> + 'a {
        let (rules, own) = match self {
            RecipientRules::Defaults(own) => (&defaults.rules, Some(own)),
            RecipientRules::Changed(rules) => (&**rules, None),
        };
        rules.iter().map(move |rule| match own {
            Some(own) => own.in_place_of(rule),
            None => rule,
        })
    }
}

/// Who has the defaults, and the rules of those who changed them.
#[derive(Default)]
pub(super) struct RulesCache {
    changed: HashMap<OwnedUserId, Arc<Ruleset>>,
    defaults: HashSet<OwnedUserId>,
}

/// What the cache knows of a user's rules.
pub(super) enum Cached {
    Defaults,
    Changed(Arc<Ruleset>),
    Unknown,
}

impl RulesCache {
    pub(super) fn get(&self, user: &UserId) -> Cached {
        if let Some(rules) = self.changed.get(user) {
            Cached::Changed(Arc::clone(rules))
        } else if self.defaults.contains(user) {
            Cached::Defaults
        } else {
            Cached::Unknown
        }
    }

    /// Remembers the user's rules: `None` for the defaults.
    pub(super) fn remember(&mut self, user: &UserId, rules: Option<Arc<Ruleset>>) {
        self.forget(user);
        match rules {
            Some(rules) => {
                if self.changed.len() >= CACHED_CHANGED {
                    self.changed.clear();
                }
                self.changed.insert(user.to_owned(), rules);
            }
            None => {
                if self.defaults.len() >= CACHED_DEFAULT_USERS {
                    self.defaults.clear();
                }
                self.defaults.insert(user.to_owned());
            }
        }
    }

    pub(super) fn forget(&mut self, user: &UserId) {
        self.changed.remove(user);
        self.defaults.remove(user);
    }

    /// Empties the cache; returns the entries dropped.
    pub(super) fn clear(&mut self) -> usize {
        let dropped = self.changed.len() + self.defaults.len();
        *self = Self::default();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use ruma::push::{FlattenedJson, PushConditionRoomCtx};
    use ruma::serde::Raw;
    use ruma::{owned_room_id, UInt};

    use super::*;

    /// The rule IDs that differ between two users' defaults are exactly
    /// those [`OwnRules`] replaces: a ruma update that names the user in
    /// another rule fails here instead of evaluating a placeholder.
    #[test]
    fn only_the_replaced_rules_name_the_user() {
        let alice = server_default_rules(&UserId::parse("@alice:one.example").unwrap());
        let bob = server_default_rules(&UserId::parse("@bob:two.example").unwrap());
        let json = |r: AnyPushRuleRef<'_>| format!("{:?}", r.to_owned());
        let ids = |rules: &Ruleset| rules.iter().map(|r| r.rule_id().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(&alice), ids(&bob));
        let differing: Vec<String> = alice
            .iter()
            .zip(bob.iter())
            .filter(|(a, b)| json(*a) != json(*b))
            .map(|(a, _)| a.rule_id().to_owned())
            .collect();
        assert_eq!(differing, [INVITE_FOR_ME, IS_USER_MENTION, LEGACY_USER_NAME]);
    }

    /// For each user and event, the shared defaults with the user's own
    /// rules in place are the user's defaults, rule by rule, and the first
    /// rule that applies is the same.
    #[test]
    fn shared_defaults_evaluate_as_each_users_own() {
        let shared = SharedDefaults::new();
        let users = ["@alice:one.example", "@bob:two.example", "@carol_x:one.example"];
        let events = [
            serde_json::json!({"type": "m.room.message", "sender": "@dan:one.example",
                "content": {"msgtype": "m.text", "body": "hello"}}),
            serde_json::json!({"type": "m.room.message", "sender": "@dan:one.example",
                "content": {"msgtype": "m.text", "body": "hi bob", "m.mentions": {"user_ids": ["@bob:two.example"]}}}),
            serde_json::json!({"type": "m.room.message", "sender": "@dan:one.example",
                "content": {"msgtype": "m.text", "body": "alice, carol_x: look"}}),
            serde_json::json!({"type": "m.room.member", "sender": "@dan:one.example", "state_key": "@carol_x:one.example",
                "content": {"membership": "invite"}}),
            serde_json::json!({"type": "m.room.member", "sender": "@dan:one.example", "state_key": "@dan:one.example",
                "content": {"membership": "join"}}),
            serde_json::json!({"type": "m.room.message", "sender": "@dan:one.example",
                "content": {"msgtype": "m.notice", "body": "bob"}}),
        ];
        for user in users {
            let user = UserId::parse(user).unwrap();
            let own = server_default_rules(&user);
            let swapped = RecipientRules::Defaults(Box::new(OwnRules::new(&user, &shared)));
            let json = |r: AnyPushRuleRef<'_>| format!("{:?}", r.to_owned());
            let own_rules: Vec<_> = own.iter().map(json).collect();
            let swapped_rules: Vec<_> = swapped.iter(&shared).map(json).collect();
            assert_eq!(own_rules, swapped_rules, "{user}");
            let mut ctx = PushConditionRoomCtx::new(
                owned_room_id!("!room:one.example"),
                UInt::from(3u32),
                user.clone(),
                user.localpart().to_owned(),
            );
            ctx.power_levels = None;
            for event in &events {
                let raw: Raw<JsonValue> = Raw::from_json(serde_json::value::to_raw_value(event).unwrap());
                let flat = FlattenedJson::from_raw(&raw);
                let first = |mut rules: Box<dyn Iterator<Item = AnyPushRuleRef<'_>> + '_>| {
                    rules
                        .find(|r| super::super::ready(r.applies(&flat, &ctx)) == Some(true))
                        .map(|r| r.rule_id().to_owned())
                };
                let expected = first(Box::new(own.iter()));
                assert_eq!(first(Box::new(swapped.iter(&shared))), expected, "{user}: {event}");
                assert!(expected.is_some(), "some default applies to {event}");
            }
        }
    }
}
