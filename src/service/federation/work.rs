//! Federation's share of the blocking pool. What other servers send costs
//! CPU (signature checks, authorization, state resolution) and storage
//! writes; run on the async workers, or in unbounded numbers on the
//! blocking pool, a burst of it (a busy room, a big room being joined)
//! would slow every client request. So it runs on the blocking pool, at
//! most `federation_workers` jobs at once; the rest wait their turn.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::service::{ServiceError, ServiceResult, Services};

pub struct FederationWork {
    places: Arc<Semaphore>,
}

impl FederationWork {
    pub fn new(workers: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// Runs `f` on the blocking pool once a place is free.
    pub async fn run<T, F>(&self, f: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _place = self
            .places
            .acquire()
            .await
            .map_err(|_| ServiceError::Internal("the federation work pool is closed".to_owned()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ServiceError::Internal(format!("federation work failed: {e}")))
    }

    /// [`Self::run`] for work on the services.
    pub async fn run_on<T, F>(&self, s: &Arc<Services>, f: F) -> ServiceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Services) -> ServiceResult<T> + Send + 'static,
    {
        let s = Arc::clone(s);
        self.run(move || f(&s)).await?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::FederationWork;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_jobs_run_at_once_than_there_are_places() {
        let work = Arc::new(FederationWork::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..12)
            .map(|i| {
                let (work, running, most) = (work.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    work.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut done = Vec::new();
        for job in jobs {
            done.push(job.await.unwrap());
        }
        assert_eq!(done, (0..12).collect::<Vec<_>>(), "every job ran");
        assert_eq!(most.load(Ordering::SeqCst), 2, "two at once, never more");
    }
}
