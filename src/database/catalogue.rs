//! The one list of tables (RocksDB column families). Each table documents its
//! key and value encoding here; keys are built only with [`super::keys`].
//! A table's typed accessors live in the module named beside it, and only the
//! service that owns that module reads or writes the table.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// Server-wide singletons (`meta.rs`).
    /// Key: `(name: str)`. Values: `conduit.schema_version` and `conduit.counter`
    /// are `u64` big-endian; the counter is a ceiling reserved a block ahead
    /// of the numbers handed out (`rocksdb.rs`).
    Global,
    /// Accounts (`users.rs`).
    /// Key: `(user_id: str)`. Value: bincode `UserRecord`.
    Users,
    /// Profile fields (`users.rs`).
    /// Key: `(user_id: str, field: str)` with field `displayname` or
    /// `avatar_url`. Value: the field's UTF-8 text.
    Profiles,
    /// Devices (`devices.rs`).
    /// Key: `(user_id: str, device_id: str)`. Value: bincode `DeviceRecord`.
    Devices,
    /// Access tokens (`devices.rs`). Only the SHA-256 of a token is stored, so
    /// a copy of the database hands out no live token.
    /// Key: `(sha256(token): [u8; 32])`. Value: key-encoded
    /// `(user_id: str, device_id: str)`.
    AccessTokens,
    /// User-interactive auth sessions (`uiaa.rs`).
    /// Key: `(session_id: str)`. Value: bincode `UiaaSessionRecord`.
    UiaaSessions,
    /// Account data (`account_data.rs`).
    /// Key: `(user_id: str, room_id: str, event_type: str)`, room_id empty for
    /// global data. Value: the event content as JSON.
    AccountData,
    /// Filters (`filters.rs`).
    /// Key: `(user_id: str, filter_id: u64)`. Value: the filter as JSON.
    Filters,
    /// This server's signing keys, current and retired (`server_keys.rs`).
    /// Key: `(key_id: str)`, e.g. `ed25519:a_XyZw`. Value: bincode
    /// `SigningKeyRecord` (PKCS#8 document, created and expired times).
    ServerSigningKeys,
    /// Short IDs of event IDs (`state.rs`). Key: `(event_id: str)`. Value:
    /// `u64` big-endian.
    ShortEventIds,
    /// The reverse. Key: `(short_event_id: u64)`. Value: the event ID, UTF-8.
    EventIdsByShort,
    /// Short IDs of state keys (`state.rs`). Key: `(event_type: str,
    /// state_key: str)`. Value: `u64` big-endian.
    ShortStateKeys,
    /// The reverse. Key: `(short_state_key: u64)`. Value: key-encoded
    /// `(event_type: str, state_key: str)`.
    StateKeysByShort,
    /// State snapshots as diffs against a parent (`state.rs`). Key:
    /// `(snapshot_id: u64)`. Value: bincode `SnapshotRecord`, whose entries
    /// are `short_state_key ‖ short_event_id`, 16 bytes big-endian.
    StateSnapshots,
    /// Identical states stored once (`state.rs`). Key: `(sha256 of the
    /// sorted entries: [u8; 32])`. Value: `snapshot_id`, `u64` big-endian.
    StateSnapshotsByHash,
    /// Rooms known to this server (`rooms.rs`). Key: `(room_id: str)`.
    /// Value: bincode `RoomRecord` (short ID, version, current state,
    /// forward extremities, last stream position).
    Rooms,
    /// Every room's events in timeline order (`rooms.rs`). Key:
    /// `(short_room_id: u64, count: u64)` for an event stored as it arrived,
    /// count being its server-wide stream position (never 0); `(short_room_id:
    /// u64, 0: u64, u64::MAX - n: u64)` for the `n`th event fetched from the
    /// room's past (backfill), so that those sort before every stream
    /// position, the oldest first (see `rooms::position`). Value: bincode
    /// `TimelineRecord` (the PDU as canonical JSON with `event_id`, plus the
    /// sending device's txnId).
    Timeline,
    /// Where an event is and the state around it (`rooms.rs`). Key:
    /// `(event_id: str)`. Value: bincode `EventMeta`.
    EventIndex,
    /// Members of each room (`rooms.rs`). Key: `(room_id: str, user_id: str)`.
    /// Value: the membership (`join`, `invite`, `leave`, `ban`, `knock`), UTF-8.
    RoomMembers,
    /// Rooms of each user, for /sync (`rooms.rs`). Key: `(user_id: str,
    /// room_id: str)`. Value: bincode `UserRoomRecord` (membership, the stream
    /// position of the change, forgotten flag).
    UserRooms,
    /// Client transaction IDs of event sends, kept a day (`txn_ids.rs`, for
    /// `rooms.rs`). Key: `(user_id: str, device_id: str, txn_id: str)`.
    /// Value: the write time in ms, `u64` big-endian, then the event ID,
    /// UTF-8 (only the event ID in entries from before times were kept).
    TxnIds,
    /// When each [`Table::TxnIds`] entry was written, oldest first
    /// (`txn_ids.rs`). Key: `(written_ms: u64, user_id: str, device_id: str,
    /// txn_id: str)`. Value: empty.
    TxnIdsByTime,
    /// Local room aliases (`directory.rs`). Key: `(alias: str)`. Value: bincode
    /// `AliasRecord` (room ID, creator).
    RoomAliases,
    /// The reverse, to list a room's aliases. Key: `(room_id: str, alias: str)`.
    /// Value: empty.
    AliasesByRoom,
    /// Rooms published in the room directory (`directory.rs`). Key: `(room_id:
    /// str)`. Value: empty.
    PublicRooms,
    /// Rooms an admin blocked or purged: local users may not join them, and
    /// a purged room is gone from the admin API (`directory.rs`). Key:
    /// `(room_id: str)`. Value: bincode `ClosedRoomRecord` (the blocking
    /// admin, purged flag, time).
    ClosedRooms,
    /// Read receipts (`receipts.rs`). Key: `(room_id: str, receipt_type: str,
    /// user_id: str, thread_id: str)`, thread_id empty for an unthreaded
    /// receipt. Value: bincode `ReceiptRecord` (event ID, time, stream position).
    Receipts,
    /// Unread notifications (`push.rs`): one entry per event that notified a
    /// user and that their receipts have not yet covered. Key: `(user_id: str,
    /// room_id: str, count: u64)`, count being the event's stream position.
    /// Value: bincode `NotificationRecord` (highlight, thread root).
    Notifications,
    /// Each user's unread counts per room (`push.rs`), kept with the
    /// entries of [`Table::Notifications`] so a /sync need not count them.
    /// Key: `(user_id: str, room_id: str)`. Value: bincode `UnreadRecord`.
    UnreadCounts,
    /// Each user's notification history, for `/notifications` (`push.rs`):
    /// one entry per event that notified them, written in the event's batch
    /// and, unlike [`Table::Notifications`], kept after a receipt covers it.
    /// Only the newest 1,000 are kept (trimmed on every 100th new one, so
    /// at most 1,099). Key: `(user_id: str, count: u64)`, count being the
    /// event's stream position. Value: bincode `HistoryRecord` (room and
    /// event IDs, time, highlight, the actions as JSON).
    NotificationHistory,
    /// The entries of [`Table::Notifications`] whose event rings the user
    /// (a call invite or a MatrixRTC ring), for the `missed_calls` count
    /// push gateways get (`push.rs`); written and removed with them. Key:
    /// `(user_id: str, room_id: str, count: u64)`. Value: empty.
    MissedCalls,
    /// Events that relate to another (`relations.rs`). Key: `(parent_event_id:
    /// str, count: u64)`, count being the relating event's stream position.
    /// Value: bincode `RelationRecord` (relating event ID, rel_type, type, sender).
    Relations,
    /// Events that have at least one entry in [`Table::Relations`]
    /// (`relations.rs`), so reading an event without any costs a point
    /// lookup (answered by the bloom filter) instead of a scan. Key:
    /// `(parent_event_id: str)`. Value: empty.
    RelationParents,
    /// Thread roots of each room (`relations.rs`). Key: `(room_id: str,
    /// root_event_id: str)`. Value: the stream position of the thread's
    /// latest event, `u64` big-endian.
    ThreadRoots,
    /// Each user's presence (`presence.rs`). Key: `(user_id: str)`. Value:
    /// bincode `PresenceRecord` (state, status message, last active time,
    /// stream position of the last change).
    Presence,
    /// Presence changes in stream order, for /sync (`presence.rs`). Key:
    /// `(count: u64)`, the position of a user's latest change; older entries
    /// of the user are deleted. Value: the user ID, UTF-8.
    PresenceChanges,
    /// Event reports (`reports.rs`). Key: `(report_id: u64)`, a stream
    /// position. Value: bincode `ReportRecord`.
    Reports,
    /// Full-text search (`search.rs`): one entry per word of an event's
    /// searchable text. Key: `(short_room_id: u64, word: str, count: u64)`,
    /// count being the event's stream position. Value: empty.
    SearchWords,
    /// Devices' identity keys (`e2e_keys.rs`). Key: `(user_id: str,
    /// device_id: str)`. Value: the signed device keys as JSON, as uploaded
    /// plus signatures the owner's self-signing key added.
    DeviceKeys,
    /// Unclaimed one-time keys (`e2e_keys.rs`). Key: `(user_id: str,
    /// device_id: str, algorithm: str, key_id: str)`, key_id in full
    /// (`signed_curve25519:AAAAHQ`). Value: the key as JSON.
    OneTimeKeys,
    /// Each device's fallback key per algorithm (`e2e_keys.rs`). Key:
    /// `(user_id: str, device_id: str, algorithm: str)`. Value: bincode
    /// `FallbackKeyRecord` (key ID, JSON, used flag).
    FallbackKeys,
    /// Cross-signing keys (`e2e_keys.rs`). Key: `(user_id: str, usage: str)`,
    /// usage `master`, `self_signing` or `user_signing`. Value: the key as
    /// JSON with the owner's own signatures.
    CrossSigningKeys,
    /// Signatures one user made on another's key (`e2e_keys.rs`), shown only
    /// to the signer. Key: `(target_user_id: str, target_key_id: str,
    /// signer_user_id: str)`, target_key_id being a device ID or a
    /// cross-signing public key. Value: JSON object of signer key ID to
    /// signature.
    KeySignatures,
    /// Whose keys changed when (`e2e_keys.rs`), for `device_lists` in /sync
    /// and `/keys/changes`. Key: `(count: u64)`, a stream position. Value:
    /// the user ID, UTF-8.
    DeviceListChanges,
    /// Queued to-device messages (`to_device.rs`). Key: `(user_id: str,
    /// device_id: str, count: u64)`, count being the stream position it was
    /// sent at. Value: JSON `{type, sender, content}`.
    ToDeviceMessages,
    /// To-device transaction IDs already handled, kept a day (`txn_ids.rs`,
    /// for `to_device.rs`). Key: `(sender_user_id: str, sender_device_id:
    /// str, txn_id: str)`. Value: the write time in ms, `u64` big-endian
    /// (empty in entries from before times were kept).
    ToDeviceTxnIds,
    /// When each [`Table::ToDeviceTxnIds`] entry was written (`txn_ids.rs`).
    /// Key: `(written_ms: u64, sender_user_id: str, sender_device_id: str,
    /// txn_id: str)`. Value: empty.
    ToDeviceTxnIdsByTime,
    /// Server-side key backup versions (`key_backups.rs`). Key: `(user_id:
    /// str, version: u64)`. Value: bincode `BackupVersionRecord` (algorithm
    /// and auth_data JSON, etag, key count, deleted flag).
    BackupVersions,
    /// Backed-up room keys (`key_backups.rs`). Key: `(user_id: str, version:
    /// u64, room_id: str, session_id: str)`. Value: the `KeyBackupData` JSON.
    BackupKeys,
    /// Each user's dehydrated device (MSC3814, `dehydrated_devices.rs`): a
    /// device kept on the server to receive keys while the user has no
    /// client open. Key: `(user_id: str)`. Value: bincode
    /// `DehydratedDeviceRecord` (device ID, opaque device data JSON).
    DehydratedDevices,
    /// Media known by `mxc://` URI, ours and that fetched from other servers
    /// (`media.rs`). Key: `(server_name: str,
    /// media_id: str)`. Value: bincode `MediaRecord` (uploader, times, and
    /// once uploaded the content's SHA-256, which names its file under the
    /// media directory, size, type and file name).
    Media,
    /// Asynchronous uploads not yet done (`media.rs`), to bound each user's.
    /// Key: `(user_id: str, media_id: str)`. Value: the expiry time in ms,
    /// `u64` big-endian.
    PendingMedia,
    /// Cached URL previews (`media.rs`). Key: `(url: str)`. Value: bincode
    /// `UrlPreviewRecord` (fetch time, OpenGraph JSON).
    UrlPreviews,
    /// OpenID tokens handed to third parties (`openid.rs`), soonest expiry
    /// first. Key: `(expires_ms: u64, sha256(token): [u8; 32])`. Value: the
    /// user ID, UTF-8.
    OpenIdTokens,
    /// Users who deactivated with `erase: true` (`users.rs`): their
    /// messages show redacted to whoever joins a room after. Key:
    /// `(user_id: str)`. Value: the stream position at the erasure, `u64`
    /// big-endian.
    ErasedUsers,
    /// Guest accounts (`users.rs`), until they upgrade. Key: `(user_id:
    /// str)`. Value: empty.
    Guests,
    /// Server admins (`users.rs`): the first person registered, and whom
    /// an admin makes one. Key: `(user_id: str)`. Value: empty.
    Admins,
    /// Events known outside a room's timeline (`rooms.rs`): state and auth
    /// events fetched from other servers (outliers), events refused by the
    /// auth rules (rejected, kept so they are refused again without work)
    /// and soft-failed events (accepted into the room graph, hidden from
    /// clients; their `EventIndex` entry has count 0). Key: `(event_id:
    /// str)`. Value: bincode `OutlierRecord` (room ID, the PDU as canonical
    /// JSON, the kind).
    Outliers,
    /// What waits to be delivered, per destination (`outbox.rs`): PDUs and
    /// EDUs for other servers and appservices, notifications for push
    /// gateways. Key: `(destination: str, seq: u64)`, destination
    /// `server:<name>`, `appservice:<id>` or `pusher:<JSON {user_id, app_id,
    /// pushkey}>`,
    /// seq from the server-wide counter. Value: bincode `OutboxItem`.
    Outbox,
    /// Other servers' signing keys (`remote_keys.rs`), current and retired.
    /// Key: `(server_name: str, key_id: str)`. Value: bincode
    /// `RemoteKeyRecord` (public key, valid until).
    RemoteServerKeys,
    /// Each server's newest key document as it signed it, for answering
    /// key queries as a notary (`remote_keys.rs`). Key: `(server_name:
    /// str)`. Value: the JSON document, UTF-8.
    RemoteKeyDocuments,
    /// Invites of our users to rooms this server is not in, and their
    /// knocks on such rooms (`rooms.rs`), until they join, refuse or
    /// withdraw. Key: `(user_id: str, room_id: str)`. Value: bincode
    /// `RemoteInviteRecord` (room version, the invite or knock event, the
    /// stripped state the room's server sent).
    RemoteInvites,
    /// Auth chains of state events, computed once (`rooms.rs`): every event
    /// reachable through `auth_events`. Key: `(short_event_id: u64)`.
    /// Value: bincode `Vec<u64>`, the chain's short event IDs, sorted. A
    /// chain never changes, so an entry is never wrong, only missing.
    AuthChains,
    /// The stream ID of each of our users' latest `m.device_list_update`
    /// (`e2e_keys.rs`): other servers chain updates by it (`prev_id`) and
    /// `/user/devices` answers it. Key: `(user_id: str)`. Value: `u64`
    /// big-endian; the IDs count 1, 2, 3… per user.
    DeviceListStreamIds,
    /// Other servers' users' device lists as this server knows them, for
    /// users who share a room with one of ours (`remote_device_lists.rs`,
    /// owned by `service::federation::device_lists`). Key: `(user_id:
    /// str)`. Value: bincode `RemoteDeviceListRecord` (the stream ID it is
    /// up to date with, each device's keys and name, the cross-signing
    /// keys). Kept in step by `m.device_list_update` EDUs; refetched when
    /// one shows a gap.
    RemoteDeviceLists,
    /// Registered application services (`appservices.rs`), from
    /// `conduit appservice register` or the config's
    /// `app_service_config_files`. Key: `(id: str)`. Value: the
    /// registration as JSON (the YAML file's fields).
    Appservices,
    /// Each user's pushers (`pushers.rs`). Key: `(user_id: str, app_id:
    /// str, pushkey: str)`. Value: bincode `PusherRecord` (the device that
    /// set it, when, the pusher as JSON). A device's pushers are the user's
    /// whose record names it.
    Pushers,
    /// The users of each `(app_id, pushkey)`, for removing a pushkey from
    /// every other user (`pushers.rs`). Key: `(app_id: str, pushkey: str,
    /// user_id: str)`. Value: empty.
    PushersByKey,
    /// Simplified sliding sync connections (`sliding_sync.rs`): what each
    /// connection has sent, so that a client continues where it left off,
    /// across restarts. Key: `(user_id: str, device_id: str, conn_id: str)`,
    /// conn_id empty when the client names none. Value: bincode
    /// `ConnectionRecord` (the last responses' positions and, per room, the
    /// stream position and room config the client holds it at).
    SlidingSyncConnections,
    /// Registration tokens made by admins (`registration_tokens.rs`; the
    /// config's `registration_token` is not stored). Key: `(token: str)`.
    /// Value: bincode `TokenRecord` (uses allowed, completed registrations,
    /// expiry time). Pending registrations are the token's live holds.
    RegistrationTokens,
    /// Registration sessions that passed the token stage and have not
    /// registered yet, each holding one use of its token until it registers
    /// or the session expires (`registration_tokens.rs`). Key: `(session_id:
    /// str)`. Value: bincode `HoldRecord` (the token, the session's start).
    RegistrationTokenHolds,
    /// Accounts the server runs itself (`users.rs`): the admin room's bot
    /// and appservices' users. They are not people: the first person to
    /// register is still made an admin. Key: `(user_id: str)`. Value: empty.
    ServerAccounts,
    /// The admin room (`admin_room.rs`). Key: `(name: str)`; `room_id`:
    /// the room's ID, UTF-8, written once the room is made.
    AdminRoom,
}

impl Table {
    pub const ALL: [Table; 73] = [
        Table::Global,
        Table::Users,
        Table::Profiles,
        Table::Devices,
        Table::AccessTokens,
        Table::UiaaSessions,
        Table::AccountData,
        Table::Filters,
        Table::ServerSigningKeys,
        Table::ShortEventIds,
        Table::EventIdsByShort,
        Table::ShortStateKeys,
        Table::StateKeysByShort,
        Table::StateSnapshots,
        Table::StateSnapshotsByHash,
        Table::Rooms,
        Table::Timeline,
        Table::EventIndex,
        Table::RoomMembers,
        Table::UserRooms,
        Table::TxnIds,
        Table::TxnIdsByTime,
        Table::RoomAliases,
        Table::AliasesByRoom,
        Table::PublicRooms,
        Table::ClosedRooms,
        Table::Receipts,
        Table::Notifications,
        Table::UnreadCounts,
        Table::NotificationHistory,
        Table::Relations,
        Table::RelationParents,
        Table::ThreadRoots,
        Table::Presence,
        Table::PresenceChanges,
        Table::Reports,
        Table::SearchWords,
        Table::DeviceKeys,
        Table::OneTimeKeys,
        Table::FallbackKeys,
        Table::CrossSigningKeys,
        Table::KeySignatures,
        Table::DeviceListChanges,
        Table::ToDeviceMessages,
        Table::ToDeviceTxnIds,
        Table::ToDeviceTxnIdsByTime,
        Table::BackupVersions,
        Table::BackupKeys,
        Table::DehydratedDevices,
        Table::Media,
        Table::PendingMedia,
        Table::UrlPreviews,
        Table::OpenIdTokens,
        Table::ErasedUsers,
        Table::Guests,
        Table::Admins,
        Table::Outliers,
        Table::Outbox,
        Table::RemoteServerKeys,
        Table::RemoteKeyDocuments,
        Table::RemoteInvites,
        Table::AuthChains,
        Table::DeviceListStreamIds,
        Table::RemoteDeviceLists,
        Table::Appservices,
        Table::Pushers,
        Table::PushersByKey,
        Table::SlidingSyncConnections,
        Table::MissedCalls,
        Table::RegistrationTokens,
        Table::RegistrationTokenHolds,
        Table::ServerAccounts,
        Table::AdminRoom,
    ];

    /// The column family name; never change one, data lives under it.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Global => "global",
            Table::Users => "users",
            Table::Profiles => "profiles",
            Table::Devices => "devices",
            Table::AccessTokens => "access_tokens",
            Table::UiaaSessions => "uiaa_sessions",
            Table::AccountData => "account_data",
            Table::Filters => "filters",
            Table::ServerSigningKeys => "server_signing_keys",
            Table::ShortEventIds => "short_event_ids",
            Table::EventIdsByShort => "event_ids_by_short",
            Table::ShortStateKeys => "short_state_keys",
            Table::StateKeysByShort => "state_keys_by_short",
            Table::StateSnapshots => "state_snapshots",
            Table::StateSnapshotsByHash => "state_snapshots_by_hash",
            Table::Rooms => "rooms",
            Table::Timeline => "timeline",
            Table::EventIndex => "event_index",
            Table::RoomMembers => "room_members",
            Table::UserRooms => "user_rooms",
            Table::TxnIds => "txn_ids",
            Table::TxnIdsByTime => "txn_ids_by_time",
            Table::RoomAliases => "room_aliases",
            Table::AliasesByRoom => "aliases_by_room",
            Table::PublicRooms => "public_rooms",
            Table::ClosedRooms => "closed_rooms",
            Table::Receipts => "receipts",
            Table::Notifications => "notifications",
            Table::UnreadCounts => "unread_counts",
            Table::NotificationHistory => "notification_history",
            Table::Relations => "relations",
            Table::RelationParents => "relation_parents",
            Table::ThreadRoots => "thread_roots",
            Table::Presence => "presence",
            Table::PresenceChanges => "presence_changes",
            Table::Reports => "reports",
            Table::SearchWords => "search_words",
            Table::DeviceKeys => "device_keys",
            Table::OneTimeKeys => "one_time_keys",
            Table::FallbackKeys => "fallback_keys",
            Table::CrossSigningKeys => "cross_signing_keys",
            Table::KeySignatures => "key_signatures",
            Table::DeviceListChanges => "device_list_changes",
            Table::ToDeviceMessages => "to_device_messages",
            Table::ToDeviceTxnIds => "to_device_txn_ids",
            Table::ToDeviceTxnIdsByTime => "to_device_txn_ids_by_time",
            Table::BackupVersions => "backup_versions",
            Table::BackupKeys => "backup_keys",
            Table::DehydratedDevices => "dehydrated_devices",
            Table::Media => "media",
            Table::PendingMedia => "pending_media",
            Table::UrlPreviews => "url_previews",
            Table::OpenIdTokens => "openid_tokens",
            Table::ErasedUsers => "erased_users",
            Table::Guests => "guests",
            Table::Admins => "admins",
            Table::Outliers => "outliers",
            Table::Outbox => "outbox",
            Table::RemoteServerKeys => "remote_server_keys",
            Table::RemoteKeyDocuments => "remote_key_documents",
            Table::RemoteInvites => "remote_invites",
            Table::AuthChains => "auth_chains",
            Table::DeviceListStreamIds => "device_list_stream_ids",
            Table::RemoteDeviceLists => "remote_device_lists",
            Table::Appservices => "appservices",
            Table::Pushers => "pushers",
            Table::PushersByKey => "pushers_by_key",
            Table::SlidingSyncConnections => "sliding_sync_connections",
            Table::MissedCalls => "missed_calls",
            Table::RegistrationTokens => "registration_tokens",
            Table::RegistrationTokenHolds => "registration_token_holds",
            Table::ServerAccounts => "server_accounts",
            Table::AdminRoom => "admin_room",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Table;
    use std::collections::HashSet;

    #[test]
    fn table_names_are_unique() {
        let names: HashSet<_> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Table::ALL.len());
    }
}
