//! Typed access to room aliases and the room directory (owned by
//! `service::rooms`). Encodings are documented in `catalogue.rs`.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{decode_key, from_record, keys, to_record, Batch, Db, DbResult, Direction, Table};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasRecord {
    pub room_id: String,
    pub creator: String,
}

/// Why local users may no longer reach a room (see [`Table::ClosedRooms`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosedRoomRecord {
    /// The admin who blocked it; `None` if it is not blocked.
    pub blocked_by: Option<String>,
    /// Deleted with `purge`: gone for local users and from the admin API.
    pub purged: bool,
    pub closed_ms: u64,
}

pub struct DirectoryTables {
    db: Db,
    /// Held by every alias write from its read of the alias to its write,
    /// so two requests for one alias cannot both find it free.
    alias_writes: Mutex<()>,
}

impl DirectoryTables {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            alias_writes: Mutex::new(()),
        }
    }

    fn lock_alias_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.alias_writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn alias(&self, alias: &str) -> DbResult<Option<AliasRecord>> {
        self.db
            .get(Table::RoomAliases, &keys::encode(alias))?
            .map(|v| from_record(Table::RoomAliases, &v))
            .transpose()
    }

    /// Stores a new alias, unless the alias exists: then it returns false
    /// and writes nothing.
    pub fn create_alias(&self, alias: &str, record: &AliasRecord) -> DbResult<bool> {
        let _writing = self.lock_alias_writes();
        if self.alias(alias)?.is_some() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        Self::add_alias(&mut batch, alias, record);
        self.db.write(batch)?;
        Ok(true)
    }

    /// Points an alias at another room, in one write.
    pub fn move_alias(&self, alias: &str, from_room_id: &str, record: &AliasRecord) -> DbResult<()> {
        let _writing = self.lock_alias_writes();
        let mut batch = Batch::new();
        batch.delete(Table::AliasesByRoom, keys::encode(&(from_room_id, alias)));
        Self::add_alias(&mut batch, alias, record);
        self.db.write(batch)
    }

    fn add_alias(batch: &mut Batch, alias: &str, record: &AliasRecord) {
        batch.put(Table::RoomAliases, keys::encode(alias), to_record(record));
        batch.put(
            Table::AliasesByRoom,
            keys::encode(&(record.room_id.as_str(), alias)),
            Vec::new(),
        );
    }

    /// Deletes an alias if it still points at `room_id` (another request
    /// may have replaced it since the caller read it); false if it did not.
    pub fn delete_alias(&self, alias: &str, room_id: &str) -> DbResult<bool> {
        let _writing = self.lock_alias_writes();
        if self.alias(alias)?.is_none_or(|record| record.room_id != room_id) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(Table::RoomAliases, keys::encode(alias));
        batch.delete(Table::AliasesByRoom, keys::encode(&(room_id, alias)));
        self.db.write(batch)?;
        Ok(true)
    }

    pub fn room_aliases(&self, room_id: &str) -> DbResult<Vec<String>> {
        self.db
            .scan_prefix(Table::AliasesByRoom, keys::encode(&(room_id,)), Direction::Forward)
            .map(|r| {
                let (k, _) = r?;
                let (_, alias): (String, String) = decode_key(Table::AliasesByRoom, &k)?;
                Ok(alias)
            })
            .collect()
    }

    pub fn set_public(&self, room_id: &str, public: bool) -> DbResult<()> {
        if public {
            self.db.put(Table::PublicRooms, keys::encode(room_id), Vec::new())
        } else {
            self.db.delete(Table::PublicRooms, keys::encode(room_id))
        }
    }

    pub fn is_public(&self, room_id: &str) -> DbResult<bool> {
        Ok(self.db.get(Table::PublicRooms, &keys::encode(room_id))?.is_some())
    }

    pub fn public_rooms(&self) -> DbResult<Vec<String>> {
        self.db
            .iter(Table::PublicRooms, None, Direction::Forward)
            .map(|r| decode_key(Table::PublicRooms, &r?.0))
            .collect()
    }

    /// Records a room as blocked or purged (or, with neither, open again).
    pub fn set_closed(&self, room_id: &str, record: &ClosedRoomRecord) -> DbResult<()> {
        if record.blocked_by.is_none() && !record.purged {
            self.db.delete(Table::ClosedRooms, keys::encode(room_id))
        } else {
            self.db
                .put(Table::ClosedRooms, keys::encode(room_id), to_record(record))
        }
    }

    pub fn closed(&self, room_id: &str) -> DbResult<Option<ClosedRoomRecord>> {
        self.db
            .get(Table::ClosedRooms, &keys::encode(room_id))?
            .map(|v| from_record(Table::ClosedRooms, &v))
            .transpose()
    }
}
