//! An appservice's registration file (the spec's YAML, as Synapse and
//! bridges write it), checked and compiled into what the server matches
//! users, aliases and rooms against.

use regex::Regex;
use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Deserializer, Serialize};

/// The registration as written in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    /// Where the appservice listens; `null` when it wants no traffic.
    #[serde(default)]
    pub url: Option<String>,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespaces: Namespaces,
    /// Whether the client rate limits apply to the users the appservice
    /// acts as: only if `true` (Synapse's default is limited; a small
    /// server's bridge is trusted unless it says otherwise). Its own user
    /// is never limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub receive_ephemeral: bool,
    /// MSC2409's name for `receive_ephemeral`, which bridges still write.
    #[serde(
        default,
        rename = "de.sorunome.msc2409.push_ephemeral",
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub msc2409_push_ephemeral: bool,
    /// MSC3202: to-device messages and device lists in transactions.
    #[serde(
        default,
        rename = "org.matrix.msc3202",
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub msc3202: bool,
    /// MSC4190: the appservice manages its users' devices itself.
    #[serde(
        default,
        rename = "io.element.msc4190",
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_false"
    )]
    pub msc4190: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    #[serde(default, deserialize_with = "null_as_default")]
    pub users: Vec<Namespace>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub aliases: Vec<Namespace>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rooms: Vec<Namespace>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(default)]
    pub exclusive: bool,
    pub regex: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Generators write `aliases:` with nothing after it (null) for "none".
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What is wrong with a registration, in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRegistration(pub String);

impl Registration {
    /// Reads a registration file's YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, BadRegistration> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            let message = message.lines().next().unwrap_or_default().to_owned();
            if path == "." {
                BadRegistration(message)
            } else {
                BadRegistration(format!("{path}: {message}"))
            }
        })
    }

    pub fn wants_ephemeral(&self) -> bool {
        self.receive_ephemeral || self.msc2409_push_ephemeral
    }
}

/// A namespace's regular expression, compiled.
#[derive(Debug)]
struct CompiledNamespace {
    regex: Regex,
    exclusive: bool,
}

/// A checked registration, ready to match against.
#[derive(Debug)]
pub struct Appservice {
    pub registration: Registration,
    /// The appservice's own user (`sender_localpart` on this server).
    pub sender: OwnedUserId,
    users: Vec<CompiledNamespace>,
    aliases: Vec<CompiledNamespace>,
    rooms: Vec<CompiledNamespace>,
}

impl Appservice {
    /// Checks `registration` for a server named `server_name`.
    pub fn new(registration: Registration, server_name: &ServerName) -> Result<Self, BadRegistration> {
        let bad = |m: String| BadRegistration(m);
        let r = &registration;
        if r.id.is_empty() {
            return Err(bad("id: must not be empty".to_owned()));
        }
        if r.as_token.is_empty() || r.hs_token.is_empty() {
            return Err(bad("as_token and hs_token must not be empty".to_owned()));
        }
        if r.as_token == r.hs_token {
            return Err(bad("as_token and hs_token must differ".to_owned()));
        }
        if let Some(url) = &r.url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(_) => return Err(bad(format!("url: `{url}` is not an http or https URL"))),
                Err(e) => return Err(bad(format!("url: `{url}`: {e}"))),
            }
        }
        let sender = UserId::parse_with_server_name(r.sender_localpart.as_str(), server_name)
            .map_err(|e| bad(format!("sender_localpart: `{}`: {e}", r.sender_localpart)))?;
        let compile = |kind: &str, list: &[Namespace]| {
            list.iter()
                .enumerate()
                .map(|(i, ns)| {
                    // Anchored at the start, as Synapse matches them
                    // (`re.match`): `@irc_.*` is not any ID containing it.
                    Regex::new(&format!("^(?:{})", ns.regex))
                        .map(|regex| CompiledNamespace {
                            regex,
                            exclusive: ns.exclusive,
                        })
                        .map_err(|e| {
                            let detail = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                            bad(format!("namespaces.{kind}[{i}].regex: `{}`: {detail}", ns.regex))
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let users = compile("users", &r.namespaces.users)?;
        let aliases = compile("aliases", &r.namespaces.aliases)?;
        let rooms = compile("rooms", &r.namespaces.rooms)?;
        Ok(Self {
            registration,
            sender,
            users,
            aliases,
            rooms,
        })
    }

    pub fn id(&self) -> &str {
        &self.registration.id
    }

    /// Whether the appservice may act as `user`: its own user or one of
    /// its user namespaces.
    pub fn is_user_in_namespace(&self, user: &str) -> bool {
        user == self.sender.as_str() || self.users.iter().any(|ns| ns.regex.is_match(user))
    }

    /// Whether `user` is in one of its exclusive user namespaces.
    pub fn claims_user(&self, user: &str) -> bool {
        user == self.sender.as_str() || self.users.iter().any(|ns| ns.exclusive && ns.regex.is_match(user))
    }

    pub fn is_alias_in_namespace(&self, alias: &str) -> bool {
        self.aliases.iter().any(|ns| ns.regex.is_match(alias))
    }

    pub fn claims_alias(&self, alias: &str) -> bool {
        self.aliases.iter().any(|ns| ns.exclusive && ns.regex.is_match(alias))
    }

    pub fn is_room_in_namespace(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|ns| ns.regex.is_match(room_id))
    }

    /// What `self` claims exclusively that `other` claims too, in a few
    /// words; `None` when nothing is found. Whether two regular
    /// expressions share a match is not decided here (in general it is
    /// costly to, and bridges' regexes are near-literal), so this checks
    /// what is certain: an exclusive user or alias regex written the same
    /// in both, and either appservice's own user inside the other's
    /// exclusive user namespace.
    pub fn exclusive_overlap(&self, other: &Appservice) -> Option<String> {
        let same = |kind: &str, mine: &[Namespace], theirs: &[Namespace]| {
            mine.iter()
                .filter(|ns| ns.exclusive)
                .find(|ns| theirs.iter().any(|t| t.exclusive && t.regex == ns.regex))
                .map(|ns| format!("both claim the {kind} `{}` exclusively", ns.regex))
        };
        let (mine, theirs) = (&self.registration.namespaces, &other.registration.namespaces);
        same("users", &mine.users, &theirs.users)
            .or_else(|| same("aliases", &mine.aliases, &theirs.aliases))
            .or_else(|| {
                other.claims_user(self.sender.as_str()).then(|| {
                    format!(
                        "{}'s user {} is in {}'s exclusive namespace",
                        self.id(),
                        self.sender,
                        other.id()
                    )
                })
            })
            .or_else(|| {
                self.claims_user(other.sender.as_str()).then(|| {
                    format!(
                        "{}'s user {} is in {}'s exclusive namespace",
                        other.id(),
                        other.sender,
                        self.id()
                    )
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `python -m heisenbridge --generate` writes.
    const HEISENBRIDGE: &str = r#"id: heisenbridge
url: http://127.0.0.1:9898
as_token: 2kWj3c0F8d4kG1wq
hs_token: 7vQhP1bYt9eZr5xM
rate_limited: false
sender_localpart: heisenbridge
namespaces:
  users:
  - regex: '@irc_.*'
    exclusive: true
  aliases: []
  rooms: []
"#;

    fn server() -> &'static ServerName {
        "example.org".try_into().unwrap()
    }

    fn check(text: &str) -> Result<Appservice, BadRegistration> {
        Appservice::new(Registration::from_yaml(text)?, server())
    }

    #[test]
    fn heisenbridges_registration_loads_and_matches_its_users() {
        let appservice = check(HEISENBRIDGE).unwrap();
        assert_eq!(appservice.sender.as_str(), "@heisenbridge:example.org");
        assert!(appservice.is_user_in_namespace("@irc_alice:example.org"));
        assert!(appservice.claims_user("@irc_alice:example.org"));
        assert!(!appservice.is_user_in_namespace("@alice:example.org"));
        assert!(
            !appservice.is_user_in_namespace("@x_irc_alice:example.org"),
            "anchored at the start"
        );
        assert!(!appservice.registration.wants_ephemeral());
    }

    #[test]
    fn unstable_flags_and_null_fields_are_read() {
        let text = "id: b\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: bot\n\
                    namespaces:\n  users:\n  aliases:\n    - regex: '#b_.*'\n      exclusive: false\n\
                    de.sorunome.msc2409.push_ephemeral: true\norg.matrix.msc3202: true\nio.element.msc4190: true\n\
                    protocols: [irc]\n";
        let appservice = check(text).unwrap();
        let r = &appservice.registration;
        assert_eq!(r.url, None);
        assert!(r.wants_ephemeral() && r.msc3202 && r.msc4190);
        assert_eq!(r.protocols, ["irc"]);
        assert!(appservice.is_alias_in_namespace("#b_room:example.org"));
        assert!(!appservice.claims_alias("#b_room:example.org"));
    }

    #[test]
    fn bad_files_are_refused_with_the_problem_named() {
        let missing = HEISENBRIDGE.replace("hs_token: 7vQhP1bYt9eZr5xM\n", "");
        let e = check(&missing).unwrap_err().0;
        assert!(e.contains("hs_token"), "{e}");

        let bad_regex = HEISENBRIDGE.replace("'@irc_.*'", "'@irc_(.*'");
        let e = check(&bad_regex).unwrap_err().0;
        assert!(e.starts_with("namespaces.users[0].regex: `@irc_(.*`"), "{e}");

        let bad_type = HEISENBRIDGE.replace("exclusive: true", "exclusive: sometimes");
        let e = check(&bad_type).unwrap_err().0;
        assert!(e.contains("namespaces.users[0].exclusive"), "{e}");

        let bad_url = HEISENBRIDGE.replace("http://127.0.0.1:9898", "ftp://x");
        assert!(check(&bad_url).unwrap_err().0.starts_with("url:"));

        let bad_sender = HEISENBRIDGE.replace("sender_localpart: heisenbridge", "sender_localpart: 'a:b'");
        assert!(check(&bad_sender).unwrap_err().0.starts_with("sender_localpart:"));

        let same_tokens = HEISENBRIDGE.replace("7vQhP1bYt9eZr5xM", "2kWj3c0F8d4kG1wq");
        assert!(check(&same_tokens).unwrap_err().0.contains("must differ"));

        assert!(check("just a string").is_err());
        assert!(check("").is_err());
    }

    #[test]
    fn exclusive_namespaces_claimed_twice_are_found() {
        let first = check(HEISENBRIDGE).unwrap();
        let other = |text: String| check(&text.replace("id: heisenbridge", "id: other")).unwrap();
        let same_users = other(
            HEISENBRIDGE
                .replace("2kWj3c0F8d4kG1wq", "t1")
                .replace("sender_localpart: heisenbridge", "sender_localpart: otherbot"),
        );
        let found = first.exclusive_overlap(&same_users).unwrap();
        assert!(found.contains("`@irc_.*`"), "{found}");

        let shared_only = other(
            HEISENBRIDGE
                .replace("exclusive: true", "exclusive: false")
                .replace("sender_localpart: heisenbridge", "sender_localpart: otherbot"),
        );
        assert_eq!(
            first.exclusive_overlap(&shared_only),
            None,
            "a non-exclusive namespace may overlap"
        );

        let sender_inside = other(
            HEISENBRIDGE
                .replace("'@irc_.*'", "'@slack_.*'")
                .replace("sender_localpart: heisenbridge", "sender_localpart: irc_bot"),
        );
        let found = first.exclusive_overlap(&sender_inside).unwrap();
        assert!(found.contains("@irc_bot:example.org"), "{found}");
        let found = sender_inside.exclusive_overlap(&first).unwrap();
        assert!(found.contains("@irc_bot:example.org"), "{found}");

        let apart = other(
            HEISENBRIDGE
                .replace("'@irc_.*'", "'@slack_.*'")
                .replace("sender_localpart: heisenbridge", "sender_localpart: slackbot"),
        );
        assert_eq!(first.exclusive_overlap(&apart), None);
    }

    #[test]
    fn a_registration_survives_its_json_form() {
        let r = Registration::from_yaml(HEISENBRIDGE).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Registration>(&json).unwrap(), r);
    }
}
