//! Password hashing (argon2id) on one dedicated thread.
//!
//! Each hash needs `argon2_memory_kib` of memory (7 MiB by default). Let
//! argon2 allocate it per hash, on whatever thread, and glibc keeps several
//! such buffers around (measured: 180 MiB after ten logins). Here one thread
//! owns one buffer, reused while logins queue and given back as soon as the
//! queue is empty: memory stays at one buffer under load, none when idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use super::{ServiceError, ServiceResult};

enum Job {
    Hash(String, mpsc::SyncSender<ServiceResult<String>>),
    Verify(String, String, mpsc::SyncSender<ServiceResult<bool>>),
}

/// Jobs wait for the hashing thread in a queue of at most `waiting` (the
/// config's `password_checks_waiting`). Each waiting caller holds a
/// blocking thread, and /login needs no account: without a bound, a flood
/// of logins would take the threads every storage call shares. Past it
/// the caller is told to retry.
pub struct PasswordHasher {
    jobs: mpsc::SyncSender<Job>,
    waiting: usize,
    /// How long the last job took, in ms: what each job waiting costs.
    last_job_ms: Arc<AtomicU64>,
}

impl PasswordHasher {
    /// Starts the hashing thread; it ends when the hasher is dropped.
    pub fn new(params: Params, waiting: usize) -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(waiting);
        let last_job_ms = Arc::new(AtomicU64::new(0));
        let timing = Arc::clone(&last_job_ms);
        thread::Builder::new()
            .name("password-hasher".to_owned())
            .spawn(move || {
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut memory = Vec::new();
                loop {
                    let job = match queue.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            // Nothing waiting: give the buffer back (a new
                            // one costs far less than a hash), then wait.
                            memory = Vec::new();
                            match queue.recv() {
                                Ok(job) => job,
                                Err(_) => break,
                            }
                        }
                    };
                    let started = Instant::now();
                    tracing::debug!(target: "conduit::wait", "password hashing started");
                    // A caller that went away no longer wants the answer.
                    match job {
                        Job::Hash(password, reply) => {
                            let _ = reply.send(hash(&argon2, &mut memory, &password));
                        }
                        Job::Verify(password, stored, reply) => {
                            let _ = reply.send(verify(&mut memory, &password, &stored));
                        }
                    }
                    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    timing.store(took, Ordering::Relaxed);
                }
            })
            .expect("spawn the password hashing thread");
        Self {
            jobs,
            waiting,
            last_job_ms,
        }
    }

    /// A new PHC-format argon2id hash with a random salt.
    pub fn hash(&self, password: &str) -> ServiceResult<String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Job::Hash(password.to_owned(), reply))?;
        answer.recv().map_err(|_| gone())?
    }

    /// Whether `password` matches `stored` (a PHC string; its own cost
    /// parameters apply, so hashes made under older settings still verify).
    pub fn verify(&self, password: &str, stored: &str) -> ServiceResult<bool> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(Job::Verify(password.to_owned(), stored.to_owned(), reply))?;
        answer.recv().map_err(|_| gone())?
    }

    fn submit(&self, job: Job) -> ServiceResult<()> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => {
                // The queue drains in about its length times one job.
                let per_job = self.last_job_ms.load(Ordering::Relaxed).max(1);
                ServiceError::Busy {
                    what: "too many password checks are waiting".to_owned(),
                    retry_after_ms: (per_job * (self.waiting as u64 + 1)).max(100),
                }
            }
            mpsc::TrySendError::Disconnected(_) => gone(),
        })
    }
}

fn gone() -> ServiceError {
    ServiceError::Internal("the password hashing thread stopped".to_owned())
}

fn internal(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("{what}: {e}"))
}

/// Runs argon2 in `memory`, growing it only if these parameters need more.
fn compute(
    argon2: &Argon2<'_>,
    memory: &mut Vec<Block>,
    password: &str,
    salt: Salt<'_>,
    len: usize,
) -> ServiceResult<Output> {
    let blocks = argon2.params().block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| internal("salt", e))?;
    Output::init_with(len, |out| {
        argon2
            .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .map_err(|e| internal("password hashing", e))
}

fn hash(argon2: &Argon2<'_>, memory: &mut Vec<Block>, password: &str) -> ServiceResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    let output = compute(argon2, memory, password, salt.as_salt(), Params::DEFAULT_OUTPUT_LEN)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| internal("params", e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

fn verify(memory: &mut Vec<Block>, password: &str, stored: &str) -> ServiceResult<bool> {
    let parsed = PasswordHash::new(stored).map_err(|e| internal("stored hash", e))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(internal("stored hash", "no salt or no hash"));
    };
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| internal("stored hash", e))?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .map_err(|e| internal("stored hash", e))?;
    let params = Params::try_from(&parsed).map_err(|e| internal("stored hash", e))?;
    let argon2 = Argon2::new(algorithm, version, params);
    let output = compute(&argon2, memory, password, salt, expected.len())?;
    // Output's equality is constant-time.
    Ok(output == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_asks_callers_to_come_back_later() {
        let hasher = Arc::new(PasswordHasher::new(Params::new(8192, 2, 1, None).unwrap(), 4));
        let stored = hasher.hash("pw").unwrap();
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (hasher, stored) = (hasher.clone(), stored.clone());
                thread::spawn(move || hasher.verify("pw", &stored))
            })
            .collect();
        let results: Vec<_> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(ServiceError::Busy { retry_after_ms, .. }) if *retry_after_ms >= 100))
            .count();
        let verified = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert!(busy > 0, "{results:?}");
        assert_eq!(busy + verified, results.len(), "{results:?}");
        // Once the queue drains, a caller is served again.
        assert!(hasher.verify("pw", &stored).unwrap());
    }

    #[test]
    fn hashes_verify_and_use_argon2id_with_the_configured_cost() {
        let hasher = PasswordHasher::new(Params::new(64, 1, 1, None).unwrap(), 4);
        let stored = hasher.hash("s3cret").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{stored}");
        assert!(hasher.verify("s3cret", &stored).unwrap());
        assert!(!hasher.verify("S3cret", &stored).unwrap());
        assert_ne!(hasher.hash("s3cret").unwrap(), stored, "salted");
        // A hash made under other settings still verifies.
        let older = PasswordHasher::new(Params::new(128, 2, 1, None).unwrap(), 4)
            .hash("pw")
            .unwrap();
        assert!(hasher.verify("pw", &older).unwrap());
        assert!(hasher.verify("pw", "not a phc string").is_err());
    }
}
