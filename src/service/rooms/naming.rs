//! Naming rooms and members as the spec's client algorithms do
//! ("Calculating the display name for a room" and "... for a user"), for
//! what the server names itself: the heroes /sync gives clients to name a
//! room by, and the room and sender names push notifications carry.

use std::collections::HashMap;

use ruma::{OwnedUserId, UserId};

/// Heroes named at most (the spec asks clients to use at least five).
pub const HEROES: usize = 5;

/// A room's members as far as naming the room goes: how many are joined
/// and invited, and the first few, in user-ID order, of those present
/// (joined or invited) and of those gone (left, banned, knocking). One
/// more than [`HEROES`] of each is kept, so any one viewer can be left out.
#[derive(Debug, Default, Clone)]
pub struct Members {
    pub joined: u64,
    pub invited: u64,
    present: Vec<OwnedUserId>,
    former: Vec<OwnedUserId>,
}

impl Members {
    /// From `(user_id, membership)` pairs in user-ID order.
    pub fn collect<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut summary = Self::default();
        for (user, membership) in members {
            let present = match membership {
                "join" => {
                    summary.joined += 1;
                    true
                }
                "invite" => {
                    summary.invited += 1;
                    true
                }
                _ => false,
            };
            let list = if present {
                &mut summary.present
            } else {
                &mut summary.former
            };
            if list.len() <= HEROES {
                list.extend(OwnedUserId::try_from(user).ok());
            }
        }
        summary
    }

    /// The members `viewer` sees the room named after: up to five others
    /// present, else up to five who were there.
    pub fn heroes(&self, viewer: &UserId) -> Vec<OwnedUserId> {
        let others = |list: &[OwnedUserId]| -> Vec<OwnedUserId> {
            list.iter().filter(|u| *u != viewer).take(HEROES).cloned().collect()
        };
        let heroes = others(&self.present);
        if heroes.is_empty() {
            others(&self.former)
        } else {
            heroes
        }
    }
}

/// The name of a room without a name or canonical alias, as `viewer` sees
/// it: "Alice", "Alice and Bob", "Alice, Bob and 2 others", "Empty room"
/// or "Empty room (was Alice)". `name_of` gives a member's display name.
pub fn from_members(members: &Members, viewer: &UserId, name_of: impl Fn(&UserId) -> String) -> String {
    let names: Vec<String> = members.heroes(viewer).iter().map(|h| name_of(h)).collect();
    let present = members.joined + members.invited;
    if present <= 1 {
        return if names.is_empty() {
            "Empty room".to_owned()
        } else {
            format!("Empty room (was {})", listed(&names, 0))
        };
    }
    let unnamed = (present - 1).saturating_sub(names.len() as u64);
    let name = listed(&names, unnamed);
    if name.is_empty() {
        "Empty room".to_owned()
    } else {
        name
    }
}

/// "Alice", "Alice and Bob", "Alice, Bob and Carol", "Alice, Bob and 2 others".
fn listed(names: &[String], more: u64) -> String {
    let mut parts = names.to_vec();
    match more {
        0 => {}
        1 => parts.push("1 other".to_owned()),
        n => parts.push(format!("{n} others")),
    }
    match parts.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [first @ .., last] => format!("{} and {last}", first.join(", ")),
    }
}

/// Members' display names as clients are to show them: the `displayname`
/// of their member event, followed by their user ID when a joined or
/// invited member has the same one (so nobody passes for someone else).
/// From `(user_id, membership, displayname)`; members without a display
/// name are left out (they go by their user ID).
pub fn display_names<'a>(
    members: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> HashMap<String, String> {
    let named: Vec<(&str, &str, &str)> = members
        .into_iter()
        .filter_map(|(user, membership, name)| Some((user, membership, name.filter(|n| !n.is_empty())?)))
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (_, membership, name) in &named {
        if matches!(*membership, "join" | "invite") {
            *uses.entry(name).or_default() += 1;
        }
    }
    named
        .into_iter()
        .map(|(user, _, name)| {
            let shown = if uses.get(name).copied().unwrap_or(0) > 1 {
                format!("{name} ({user})")
            } else {
                name.to_owned()
            };
            (user.to_owned(), shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(members: &[(&str, &str)], viewer: &str) -> String {
        let names: HashMap<&str, &str> = [("@a:x", "Alice"), ("@b:x", "Bob"), ("@c:x", "Carol")].into();
        let members = Members::collect(members.iter().copied());
        let viewer = UserId::parse(viewer).unwrap();
        from_members(&members, &viewer, |u| {
            names.get(u.as_str()).map_or_else(|| u.to_string(), |n| (*n).to_owned())
        })
    }

    #[test]
    fn rooms_are_named_after_their_other_members() {
        assert_eq!(name(&[("@a:x", "join"), ("@v:x", "join")], "@v:x"), "Alice");
        assert_eq!(
            name(&[("@a:x", "join"), ("@b:x", "invite"), ("@v:x", "join")], "@v:x"),
            "Alice and Bob"
        );
        assert_eq!(
            name(
                &[("@a:x", "join"), ("@b:x", "join"), ("@c:x", "join"), ("@v:x", "join")],
                "@v:x"
            ),
            "Alice, Bob and Carol"
        );
        let crowd: Vec<String> = (0..8).map(|i| format!("@u{i}:x")).collect();
        let mut members: Vec<(&str, &str)> = vec![("@a:x", "join"), ("@b:x", "join")];
        members.extend(crowd.iter().map(|u| (u.as_str(), "join")));
        members.push(("@v:x", "join"));
        // Five of the ten others are named.
        assert_eq!(name(&members, "@v:x"), "Alice, Bob, @u0:x, @u1:x, @u2:x and 5 others");
    }

    #[test]
    fn a_room_left_alone_is_empty() {
        assert_eq!(name(&[("@v:x", "join")], "@v:x"), "Empty room");
        assert_eq!(
            name(&[("@a:x", "leave"), ("@v:x", "join")], "@v:x"),
            "Empty room (was Alice)"
        );
        assert_eq!(
            name(&[("@a:x", "leave"), ("@b:x", "ban"), ("@v:x", "join")], "@v:x"),
            "Empty room (was Alice and Bob)"
        );
    }

    #[test]
    fn shared_display_names_carry_the_user_id() {
        let names = display_names([
            ("@a:x", "join", Some("Sam")),
            ("@b:x", "invite", Some("Sam")),
            ("@c:x", "join", Some("Carol")),
            ("@d:x", "leave", Some("Carol")),
            ("@e:x", "join", None),
        ]);
        assert_eq!(names["@a:x"], "Sam (@a:x)");
        assert_eq!(names["@b:x"], "Sam (@b:x)");
        assert_eq!(names["@c:x"], "Carol", "one who left does not count");
        assert_eq!(names["@d:x"], "Carol");
        assert!(!names.contains_key("@e:x"));
    }
}
