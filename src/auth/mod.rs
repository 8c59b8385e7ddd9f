//! Auth mode `proxy`: who is asking, and what they may write. Credentials are read as
//! InfluxDB reads them (`u`+`p` when both are non-empty, else `Authorization`: `Bearer`,
//! `Token`, `Basic`); tokens are compared as SHA-256 digests in constant time; passwords are
//! checked against argon2 hashes, with successes cached under a per-process HMAC key so a
//! client sending its password on every request costs one hash; JWTs are HS256 only. Every
//! failure is the same 401. No HTTP here: `http::auth` is the layer that asks, and puts the
//! [`Principal`] in the request's extensions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::config::{sha256, AuthConfig, PasswordCheck, RateConfig, Secret};
use crate::error::ProxyError;
use crate::limit::{Limits, LoginThrottle, Pending};

mod credentials;
mod jwt;

pub use credentials::{presented, Presented};
pub use jwt::verify_jwt;

/// Someone who authenticated: a token's name or a username.
pub struct Principal {
    pub name: String,
    databases: Vec<String>,
    read_databases: Vec<String>,
    /// May run InfluxQL that changes schema, data or users (SPEC §10).
    pub admin: bool,
    pub limits: Limits,
}

/// Grants, as configured, for one principal.
struct GrantConfig<'a> {
    write: &'a [String],
    read: &'a [String],
    admin: bool,
}

impl Principal {
    fn new(name: &str, grants: GrantConfig<'_>, rate: RateConfig) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            databases: grants.write.to_vec(),
            read_databases: grants.read.to_vec(),
            admin: grants.admin,
            limits: Limits::new(rate),
        })
    }

    /// Whether a `databases` pattern allows `db` (and `rp`). `db` patterns allow any
    /// retention policy; `db/rp` patterns need the write to name a matching rp (the default
    /// policy's name is the cluster's business, so `db/*` is the way to allow it).
    pub fn may_write(&self, db: &str, rp: Option<&str>) -> bool {
        granted(&self.databases, db, rp)
    }

    /// For `CREATE DATABASE`: whether any pattern covers the database at all.
    pub fn may_use_database(&self, db: &str) -> bool {
        covered(&self.databases, db)
    }

    /// Whether a `read_databases` pattern allows reading `db` (and `rp`), as `may_write`.
    pub fn may_read(&self, db: &str, rp: Option<&str>) -> bool {
        granted(&self.read_databases, db, rp)
    }

    /// For `SHOW DATABASES`: whether any read pattern covers the database.
    pub fn may_see_database(&self, db: &str) -> bool {
        covered(&self.read_databases, db)
    }

    /// Whether every database is readable (`"*"`), so nothing needs filtering.
    pub fn reads_everything(&self) -> bool {
        self.read_databases.iter().any(|p| p == "*" || p == "*/*")
    }
}

fn granted(patterns: &[String], db: &str, rp: Option<&str>) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.split_once('/') {
            None => glob_match::glob_match(pattern, db),
            Some((db_glob, rp_glob)) => {
                glob_match::glob_match(db_glob, db)
                    && (rp_glob == "*" || rp.is_some_and(|rp| glob_match::glob_match(rp_glob, rp)))
            }
        })
}

fn covered(patterns: &[String], db: &str) -> bool {
    patterns.iter().any(|pattern| {
        glob_match::glob_match(pattern.split_once('/').map_or(pattern, |(d, _)| d), db)
    })
}

/// Successful password checks remembered at most; the cache is emptied when full.
const CACHE_ENTRIES: usize = 10_000;
/// Argon2 computations at once: each takes a core for tens of milliseconds.
const CONCURRENT_HASHES: usize = 2;

type HmacSha256 = Hmac<Sha256>;

/// How a user's password is verified: always against an argon2 hash.
struct Verifier {
    phc: String,
    /// The hash is of the password's SHA-256 in hex: a plain password from the environment,
    /// whose digest was hashed at load, so it costs what an argon2 user costs.
    prehashed: bool,
}

impl Verifier {
    fn new(check: &PasswordCheck) -> Self {
        match check {
            PasswordCheck::Argon2(phc) => Self {
                phc: phc.clone(),
                prehashed: false,
            },
            PasswordCheck::Plain(digest) => Self {
                phc: hash_password(&hex(digest)),
                prehashed: true,
            },
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks credentials against the configured tokens, users and JWT secret.
pub struct Authenticator {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    users: HashMap<String, (Verifier, Arc<Principal>)>,
    jwt_secret: Option<Secret>,
    jwt_leeway: Duration,
    /// HMAC keys of (user, password, hash) that verified; the key is random per process.
    cache: Mutex<std::collections::HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
    hashing: Arc<Semaphore>,
    hashes: std::sync::atomic::AtomicU64,
    pub throttle: LoginThrottle,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut cache_key = [0u8; 32];
        getrandom::fill(&mut cache_key).expect("the OS has randomness");
        Self {
            tokens: config
                .tokens
                .iter()
                .map(|t| {
                    let grants = GrantConfig {
                        write: &t.databases,
                        read: &t.read_databases,
                        admin: t.admin,
                    };
                    (t.digest, Principal::new(&t.name, grants, t.rate))
                })
                .collect(),
            users: config
                .users
                .iter()
                .map(|u| {
                    let grants = GrantConfig {
                        write: &u.databases,
                        read: &u.read_databases,
                        admin: u.admin,
                    };
                    let principal = Principal::new(&u.username, grants, u.rate);
                    (u.username.clone(), (Verifier::new(&u.password), principal))
                })
                .collect(),
            jwt_secret: config.jwt_secret.clone(),
            jwt_leeway: config.jwt_leeway,
            cache: Mutex::new(Default::default()),
            cache_key,
            hashing: Arc::new(Semaphore::new(CONCURRENT_HASHES)),
            hashes: Default::default(),
            throttle: LoginThrottle::new(),
        }
    }

    pub fn jwt_enabled(&self) -> bool {
        self.jwt_secret.is_some()
    }

    /// Argon2 verifications run so far (the cache should keep this near the user count).
    pub fn hashes_computed(&self) -> u64 {
        self.hashes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The principal behind `presented` from `ip`, or 401 (429 when `ip` has too many
    /// password checks under way, see [`LoginThrottle::begin`]).
    pub async fn authenticate(
        &self,
        presented: Presented,
        ip: IpAddr,
    ) -> Result<Arc<Principal>, ProxyError> {
        match presented {
            Presented::None | Presented::Malformed => Err(ProxyError::Unauthorized),
            Presented::Token(token) => self.token(&token),
            Presented::UserPassword { user, password } => self.password(&user, &password, ip).await,
            Presented::Jwt(jwt) => {
                let secret = self.jwt_secret.as_ref().ok_or(ProxyError::Unauthorized)?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                let leeway = self.jwt_leeway.as_secs() as i64;
                let username = verify_jwt(&jwt, secret.expose().as_bytes(), now, leeway)
                    .ok_or(ProxyError::Unauthorized)?;
                self.users
                    .get(&username)
                    .map(|(_, p)| p.clone())
                    .ok_or(ProxyError::Unauthorized)
            }
        }
    }

    fn token(&self, token: &str) -> Result<Arc<Principal>, ProxyError> {
        let digest = sha256(token.as_bytes());
        // Compare against every token, without stopping at a match.
        let mut found = None;
        for (candidate, principal) in &self.tokens {
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found.ok_or(ProxyError::Unauthorized)
    }

    /// Every path costs one argon2 verification (or a cache hit for a password that
    /// verified before): an unknown user against a dummy hash, a plain password against the
    /// hash made of it at load. So the time a 401 takes tells nothing about which names exist.
    async fn password(
        &self,
        user: &str,
        password: &Secret,
        ip: IpAddr,
    ) -> Result<Arc<Principal>, ProxyError> {
        let Some((check, principal)) = self.users.get(user) else {
            let pending = self.throttle.begin(ip)?;
            let _ = self
                .verify_argon2(dummy_hash().to_string(), password.clone(), pending)
                .await;
            return Err(ProxyError::Unauthorized);
        };
        let presented = match check.prehashed {
            true => Secret::new(hex(&sha256(password.expose().as_bytes()))),
            false => password.clone(),
        };
        let key = self.cache_key(user, password, &check.phc);
        if self.cache.lock().expect("cache lock").contains(&key) {
            return Ok(principal.clone());
        }
        let pending = self.throttle.begin(ip)?;
        if !self
            .verify_argon2(check.phc.clone(), presented, pending)
            .await
        {
            return Err(ProxyError::Unauthorized);
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key);
        Ok(principal.clone())
    }

    fn cache_key(&self, user: &str, password: &Secret, phc: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.cache_key).expect("HMAC takes any key");
        for part in [user, password.expose(), phc] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// One argon2 verification, at most [`CONCURRENT_HASHES`] at once. The hash owns its
    /// semaphore permit and the address's `pending` place, so a client that disconnects
    /// mid-check frees neither before the hash is done: hanging up cannot queue more.
    async fn verify_argon2(&self, phc: String, password: Secret, pending: Pending) -> bool {
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        self.hashes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _held = (permit, pending);
            PasswordHash::new(&phc)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(password.expose().as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }
}

/// An argon2id hash of a random password, computed once, for unknown usernames.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut password = [0u8; 32];
        getrandom::fill(&mut password).expect("the OS has randomness");
        hash_password(&base64::engine::general_purpose::STANDARD.encode(password))
    })
}

/// An argon2id PHC string for `password` with the default parameters and a random salt.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS has randomness");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenConfig, UserConfig};

    use credentials::up;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    const RATE: RateConfig = RateConfig {
        requests_per_second: 0,
        bytes_per_second: 0,
        burst_seconds: 2,
    };

    fn authenticator(jwt: Option<&str>) -> Authenticator {
        Authenticator::new(&AuthConfig {
            mode: crate::config::AuthMode::Proxy,
            tokens: vec![TokenConfig {
                name: "telegraf".into(),
                digest: sha256(b"telegraf-token-0123456789"),
                databases: vec!["telegraf".into()],
                read_databases: vec![],
                admin: false,
                rate: RATE,
            }],
            users: vec![
                UserConfig {
                    username: "alice".into(),
                    password: PasswordCheck::Argon2(hash_password("alice-pw")),
                    databases: vec!["app_*".into(), "metrics/short".into()],
                    read_databases: vec!["app_*".into(), "metrics/short".into()],
                    admin: false,
                    rate: RATE,
                },
                UserConfig {
                    username: "bob".into(),
                    password: PasswordCheck::Plain(sha256(b"bob-pw")),
                    databases: vec!["*".into()],
                    read_databases: vec!["*".into()],
                    admin: true,
                    rate: RATE,
                },
            ],
            jwt_secret: jwt.map(|s| Secret::new(s.into())),
            jwt_leeway: Duration::ZERO,
        })
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let shown = format!("{:?}", up("al", "hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn tokens_users_and_their_failures() {
        let auth = authenticator(None);
        let t = auth
            .authenticate(Presented::Token("telegraf-token-0123456789".into()), CLIENT)
            .await
            .unwrap();
        assert_eq!(t.name, "telegraf");
        assert_eq!(
            auth.authenticate(up("alice", "alice-pw"), CLIENT)
                .await
                .unwrap()
                .name,
            "alice"
        );
        assert_eq!(
            auth.authenticate(up("bob", "bob-pw"), CLIENT)
                .await
                .unwrap()
                .name,
            "bob"
        );
        for bad in [
            Presented::None,
            Presented::Malformed,
            Presented::Token("telegraf-token-012345678".into()),
            up("alice", "wrong"),
            up("bob", "wrong"),
            up("mallory", "alice-pw"),
            Presented::Jwt("a.b.c".into()),
        ] {
            let shown = format!("{bad:?}");
            assert!(
                matches!(
                    auth.authenticate(bad, CLIENT).await,
                    Err(ProxyError::Unauthorized)
                ),
                "{shown}"
            );
        }
    }

    #[tokio::test]
    async fn repeated_password_costs_one_hash() {
        let auth = authenticator(None);
        for _ in 0..50 {
            auth.authenticate(up("alice", "alice-pw"), CLIENT)
                .await
                .unwrap();
        }
        assert_eq!(auth.hashes_computed(), 1);
        // A wrong password is never cached as right, and costs a hash each time.
        for _ in 0..2 {
            assert!(auth
                .authenticate(up("alice", "alice-pw2"), CLIENT)
                .await
                .is_err());
        }
        assert_eq!(auth.hashes_computed(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hanging_up_mid_check_keeps_the_place_until_the_hash_is_done() {
        let auth = Arc::new(authenticator(None));
        let guesses: Vec<_> = (0..2)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.authenticate(up("mallory", "x"), CLIENT).await })
            })
            .collect();
        while auth.hashes_computed() < 2 {
            tokio::task::yield_now().await;
        }
        // The clients hang up while their hashes run.
        for guess in &guesses {
            guess.abort();
        }
        let refused = auth.throttle.begin(CLIENT).err();
        assert!(
            matches!(refused, Some(ProxyError::LoginsPending { .. })),
            "{refused:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(
            auth.throttle.begin(CLIENT).is_ok(),
            "places come back with the hashes"
        );
    }

    #[test]
    fn database_patterns_with_and_without_retention_policy() {
        let auth = authenticator(None);
        let alice = &auth.users["alice"].1;
        assert!(alice.may_write("app_web", None));
        assert!(alice.may_write("app_web", Some("anything")));
        assert!(!alice.may_write("telegraf", None));
        assert!(alice.may_write("metrics", Some("short")));
        assert!(!alice.may_write("metrics", Some("long")));
        assert!(
            !alice.may_write("metrics", None),
            "db/rp needs the rp named"
        );
        assert!(alice.may_use_database("metrics"));
        assert!(!alice.may_use_database("telegraf"));
    }

    #[test]
    fn read_grants_are_their_own_patterns() {
        let auth = authenticator(None);
        let (alice, bob) = (&auth.users["alice"].1, &auth.users["bob"].1);
        let telegraf = &auth.tokens[0].1;
        assert!(alice.may_read("app_web", None));
        assert!(!alice.may_read("metrics", None), "db/rp needs the rp named");
        assert!(alice.may_read("metrics", Some("short")));
        assert!(alice.may_see_database("metrics"));
        assert!(!alice.may_see_database("telegraf"));
        assert!(!alice.reads_everything() && !alice.admin);
        assert!(bob.reads_everything() && bob.admin);
        assert!(
            telegraf.may_write("telegraf", None) && !telegraf.may_read("telegraf", None),
            "a write grant is no read grant"
        );
    }

    #[tokio::test]
    async fn jwt_username_must_be_a_configured_user() {
        let secret = "0123456789abcdef0123456789abcdef";
        let auth = authenticator(Some(secret));
        let hs256 = r#"{"alg":"HS256"}"#;
        let alice = jwt::signed(
            hs256,
            r#"{"username":"alice","exp":99999999999}"#,
            secret.as_bytes(),
        );
        assert_eq!(
            auth.authenticate(Presented::Jwt(alice), CLIENT)
                .await
                .unwrap()
                .name,
            "alice"
        );
        let mallory = jwt::signed(
            hs256,
            r#"{"username":"mallory","exp":99999999999}"#,
            secret.as_bytes(),
        );
        assert!(auth
            .authenticate(Presented::Jwt(mallory), CLIENT)
            .await
            .is_err());
    }
}
