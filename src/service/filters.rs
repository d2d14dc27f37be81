//! Stored sync filters.

use ruma::api::client::filter::FilterDefinition;
use ruma::UserId;

use super::{ServiceError, ServiceResult};
use crate::database::filters::FiltersTables;
use crate::database::Db;

pub struct FiltersService {
    tables: FiltersTables,
}

impl FiltersService {
    pub fn new(db: Db) -> Self {
        Self {
            tables: FiltersTables::new(db),
        }
    }

    /// Stores the filter and returns its ID.
    pub fn create(&self, user_id: &UserId, filter: &FilterDefinition) -> ServiceResult<String> {
        let json = serde_json::to_string(filter).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let id = self.tables.next_id()?;
        self.tables.put(user_id.as_str(), id, &json)?;
        Ok(id.to_string())
    }

    pub fn get(&self, user_id: &UserId, filter_id: &str) -> ServiceResult<FilterDefinition> {
        let not_found = || ServiceError::NotFound("filter not found".to_owned());
        let id: u64 = filter_id.parse().map_err(|_| not_found())?;
        let json = self.tables.get(user_id.as_str(), id)?.ok_or_else(not_found)?;
        serde_json::from_str(&json).map_err(|e| ServiceError::Internal(format!("stored filter: {e}")))
    }
}
