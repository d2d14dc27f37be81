//! User-interactive authentication: sessions, stages and flows.

use ruma::api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier};
use ruma::api::error::{ErrorKind, StandardErrorBody};
use ruma::UserId;
use std::sync::Arc;

use super::registration_tokens::RegistrationTokensService;
use super::users::UsersService;
use super::{now_ms, random_string, ServiceError, ServiceResult};
use crate::database::uiaa::{UiaaSessionRecord, UiaaTables};
use crate::database::Db;

/// What a session authorises; a session started for one purpose cannot
/// complete another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    ChangePassword,
    DeleteDevices,
    Deactivate,
    /// Replacing cross-signing keys.
    SigningKeys,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::ChangePassword => "change_password",
            Purpose::DeleteDevices => "delete_devices",
            Purpose::Deactivate => "deactivate",
            Purpose::SigningKeys => "signing_keys",
        }
    }
}

/// The purpose of a registration session whose flow is complete; its
/// `user_id` names the account once it is made.
const REGISTERED: &str = "registered";

/// Sessions older than this are refused and must be started again.
pub(crate) const SESSION_LIFETIME_MS: u64 = 30 * 60 * 1000;

pub struct UiaaService {
    tables: UiaaTables,
    registration_tokens: Arc<RegistrationTokensService>,
}

impl UiaaService {
    pub fn new(db: Db, registration_tokens: Arc<RegistrationTokensService>) -> Self {
        Self {
            tables: UiaaTables::new(db),
            registration_tokens,
        }
    }

    /// Drops sessions that can no longer complete; run at start-up, as
    /// unauthenticated registration attempts leave sessions behind.
    pub fn purge_expired(&self) -> ServiceResult<usize> {
        self.registration_tokens.purge_expired_holds()?;
        Ok(self
            .tables
            .delete_created_before(now_ms().saturating_sub(SESSION_LIFETIME_MS))?)
    }

    fn flows(&self, purpose: Purpose) -> Vec<AuthFlow> {
        let stages = match purpose {
            // Synapse's flow: the token stage first and a dummy stage after
            // it, so a token's use is pending between the two.
            Purpose::Register if self.registration_tokens.required() => {
                vec![AuthType::RegistrationToken, AuthType::Dummy]
            }
            Purpose::Register => vec![AuthType::Dummy],
            _ => vec![AuthType::Password],
        };
        vec![AuthFlow::new(stages)]
    }

    /// Advances (or starts) the session for `auth`. `Ok(())` once a whole flow
    /// is complete; otherwise [`ServiceError::AuthRequired`] with what is left.
    ///
    /// `operation` names what exactly the request does where the purpose
    /// alone does not (the devices to delete): a session started for one
    /// operation cannot complete another.
    pub fn authenticate(
        &self,
        users: &UsersService,
        user_id: Option<&UserId>,
        purpose: Purpose,
        operation: &str,
        auth: Option<&AuthData>,
    ) -> ServiceResult<()> {
        let flows = self.flows(purpose);
        let bound_to = if operation.is_empty() {
            purpose.as_str().to_owned()
        } else {
            format!("{}:{operation}", purpose.as_str())
        };
        let Some(auth) = auth else {
            let session = random_string(24);
            let record = UiaaSessionRecord {
                user_id: user_id.map(|u| u.to_string()),
                purpose: bound_to,
                completed: Vec::new(),
                created_ms: now_ms(),
            };
            self.tables.put(&session, &record)?;
            return Err(self.info(flows, &record, session, None));
        };

        let (session, mut record) = match auth.session() {
            Some(session) => {
                let record = self
                    .tables
                    .get(session)?
                    .filter(|r| now_ms().saturating_sub(r.created_ms) < SESSION_LIFETIME_MS)
                    .ok_or_else(|| ServiceError::NotFound("unknown or expired authentication session".to_owned()))?;
                if record.purpose != bound_to || record.user_id.as_deref() != user_id.map(|u| u.as_str()) {
                    return Err(ServiceError::Forbidden(
                        "this session belongs to another request".to_owned(),
                    ));
                }
                (session.to_owned(), record)
            }
            // A client may answer a single-stage flow without a session.
            None => (
                random_string(24),
                UiaaSessionRecord {
                    user_id: user_id.map(|u| u.to_string()),
                    purpose: bound_to,
                    completed: Vec::new(),
                    created_ms: now_ms(),
                },
            ),
        };

        let allowed: Vec<AuthType> = flows.iter().flat_map(|f| f.stages.iter().cloned()).collect();
        let stage = auth.auth_type();
        let stage_error = match (&stage, auth) {
            (Some(t), _) if !allowed.contains(t) => Some(format!("{t} is not a stage of this server's flows")),
            (_, AuthData::Dummy(_)) => None,
            (_, AuthData::RegistrationToken(t)) => {
                self.registration_tokens
                    .take_use(&session, record.created_ms, &t.token)?
            }
            (_, AuthData::Password(p)) => self.check_password(users, user_id, &p.identifier, &p.password)?,
            _ => Some("unsupported authentication type".to_owned()),
        };

        if let Some(message) = stage_error {
            self.tables.put(&session, &record)?;
            return Err(self.info(flows, &record, session, Some(message)));
        }
        let done = stage.expect("a checked stage has a type").to_string();
        if !record.completed.contains(&done) {
            record.completed.push(done);
        }
        let complete = flows.iter().any(|f| {
            f.stages
                .iter()
                .all(|s| record.completed.iter().any(|c| *c == s.to_string()))
        });
        if complete {
            if purpose == Purpose::Register {
                // Kept (until it expires) so that a repeated request gets
                // the same account: see `registered_in`.
                record.purpose = REGISTERED.to_owned();
                self.tables.put(&session, &record)?;
            } else {
                self.tables.delete(&session)?;
            }
            Ok(())
        } else {
            self.tables.put(&session, &record)?;
            Err(self.info(flows, &record, session, None))
        }
    }

    /// Names the account a completed registration session made, so that
    /// the request repeated with this session returns it again.
    pub fn record_registration(&self, auth: Option<&AuthData>, user_id: &UserId) -> ServiceResult<()> {
        let Some(session) = auth.and_then(AuthData::session) else {
            return Ok(());
        };
        self.registration_tokens.complete(session)?;
        if let Some(mut record) = self.tables.get(session)?.filter(|r| r.purpose == REGISTERED) {
            record.user_id = Some(user_id.to_string());
            self.tables.put(session, &record)?;
        }
        Ok(())
    }

    /// The account a registration session already made, if `auth` names
    /// one that did: registration is idempotent within its session.
    pub fn registered_in(&self, auth: Option<&AuthData>) -> ServiceResult<Option<ruma::OwnedUserId>> {
        let Some(session) = auth.and_then(AuthData::session) else {
            return Ok(None);
        };
        let Some(record) = self
            .tables
            .get(session)?
            .filter(|r| r.purpose == REGISTERED && now_ms().saturating_sub(r.created_ms) < SESSION_LIFETIME_MS)
        else {
            return Ok(None);
        };
        record
            .user_id
            .map(|u| ruma::OwnedUserId::try_from(u).map_err(|e| ServiceError::Internal(format!("stored session: {e}"))))
            .transpose()
    }

    fn check_password(
        &self,
        users: &UsersService,
        user_id: Option<&UserId>,
        identifier: &UserIdentifier,
        password: &str,
    ) -> ServiceResult<Option<String>> {
        let Some(user_id) = user_id else {
            return Ok(Some("no account to check a password for".to_owned()));
        };
        let named = match identifier {
            UserIdentifier::Matrix(m) => m.user.as_str(),
            _ => return Ok(Some("only m.id.user identifiers are supported".to_owned())),
        };
        // The identifier may be the full ID or the localpart, and must be the
        // authenticated user either way.
        if named != user_id.as_str() && !named.eq_ignore_ascii_case(user_id.localpart()) {
            return Ok(Some("the identifier is not the authenticated user".to_owned()));
        }
        match users.verify_password(user_id, password) {
            Ok(()) => Ok(None),
            Err(ServiceError::Forbidden(_)) => Ok(Some("invalid password".to_owned())),
            Err(e) => Err(e),
        }
    }

    fn info(
        &self,
        flows: Vec<AuthFlow>,
        record: &UiaaSessionRecord,
        session: String,
        error: Option<String>,
    ) -> ServiceError {
        let mut info = UiaaInfo::new(flows);
        info.completed = record.completed.iter().map(|c| AuthType::from(c.as_str())).collect();
        info.session = Some(session);
        info.auth_error = error.map(|m| Box::new(StandardErrorBody::new(ErrorKind::Forbidden, m)));
        ServiceError::AuthRequired(Box::new(info))
    }
}
