//! Lookups in other servers' namespaces: room aliases and profiles.

use ruma::api::federation::query::{get_profile_information, get_room_information};
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, UserId};

use super::FederationService;
use crate::service::ServiceResult;

impl FederationService {
    /// The room an alias of another server names, and servers in it.
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> ServiceResult<(OwnedRoomId, Vec<OwnedServerName>)> {
        let request = get_room_information::v1::Request::new(alias.to_owned());
        let answer = self.client.send(alias.server_name(), request).await?;
        Ok((answer.room_id, answer.servers))
    }

    /// `(displayname, avatar_url)` of another server's user.
    pub async fn profile(&self, user: &UserId) -> ServiceResult<(Option<String>, Option<String>)> {
        let request = get_profile_information::v1::Request::new(user.to_owned());
        let answer = self.client.send(user.server_name(), request).await?;
        let text = |field: &str| answer.data.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        Ok((text("displayname"), text("avatar_url")))
    }
}
