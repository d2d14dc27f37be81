//! Typed access to [`Table::AdminRoom`] (owned by `service::admin_room`).

use super::{keys::encode, utf8, Db, DbResult, Table};

const ROOM_ID: &str = "room_id";

pub struct AdminRoomTables {
    db: Db,
}

impl AdminRoomTables {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The admin room's ID, once it has been made.
    pub fn room_id(&self) -> DbResult<Option<String>> {
        self.db
            .get(Table::AdminRoom, &encode(ROOM_ID))?
            .map(|bytes| utf8(Table::AdminRoom, bytes))
            .transpose()
    }

    pub fn put_room_id(&self, room_id: &str) -> DbResult<()> {
        self.db
            .put(Table::AdminRoom, encode(ROOM_ID), room_id.as_bytes().to_vec())
    }
}
