//! Rooms an admin closed to local users: blocked (joins refused) or purged
//! (gone for them), and taking a room out of the directory.

use ruma::RoomId;

use super::RoomsService;
use crate::database::directory::ClosedRoomRecord;
use crate::service::{ServiceError, ServiceResult};

impl RoomsService {
    /// Whether the room was blocked or purged, and by whom.
    pub fn closed(&self, room_id: &RoomId) -> ServiceResult<Option<ClosedRoomRecord>> {
        Ok(self.directory.closed(room_id.as_str())?)
    }

    pub fn set_closed(&self, room_id: &RoomId, record: &ClosedRoomRecord) -> ServiceResult<()> {
        Ok(self.directory.set_closed(room_id.as_str(), record)?)
    }

    /// Refuses a local user's join to a blocked room (403, Synapse's
    /// message) or a purged one (404, as if it had never been).
    pub fn check_joinable(&self, room_id: &RoomId) -> ServiceResult<()> {
        match self.closed(room_id)? {
            Some(record) if record.blocked_by.is_some() => Err(ServiceError::Forbidden(
                "This room has been blocked on this server".to_owned(),
            )),
            Some(record) if record.purged => Err(ServiceError::NotFound(
                "this room is not known to this server".to_owned(),
            )),
            _ => Ok(()),
        }
    }

    /// Unpublishes the room and deletes its local aliases; the aliases
    /// deleted.
    pub fn remove_from_directory(&self, room_id: &RoomId) -> ServiceResult<Vec<String>> {
        self.directory.set_public(room_id.as_str(), false)?;
        let mut removed = Vec::new();
        for alias in self.directory.room_aliases(room_id.as_str())? {
            if self.directory.delete_alias(&alias, room_id.as_str())? {
                removed.push(alias);
            }
        }
        Ok(removed)
    }
}
