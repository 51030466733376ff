//! Authentication and role-based access control, as etcd's auth store.
//!
//! [`AuthState`] is the replicated part (users, roles, permissions, whether auth is enabled,
//! the auth revision): it changes only when the owner shard applies a logged request
//! ([`AuthState::apply`]), so a replay or another member reaches the same state. After each
//! change the owner publishes an immutable copy ([`AuthView`]) to [`AuthShared`], which every
//! shard reads to check a caller's permissions before its request leaves the shard.
//! Passwords are bcrypt hashes, made and checked on the accepting shard's blocking thread,
//! never logged in clear, never returned.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::EtcdError;
use crate::proto::authpb;
use crate::proto::etcdserverpb as pb;

/// The user and the role that may do anything (etcd's).
pub const ROOT: &str = "root";

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// The bcrypt hash; empty for a user without a password (certificate only).
    pub hash: String,
    pub roles: BTreeSet<String>,
    pub no_password: bool,
}

/// The replicated auth state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// etcd's auth revision: 1 in a new store, +1 for every change.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    /// Each role's permissions, sorted by key as etcd keeps them.
    pub roles: BTreeMap<String, Vec<authpb::Permission>>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// A change of the auth state or a read of it; what the Auth service's RPCs become.
#[derive(Clone, Debug)]
pub enum AuthOp {
    Enable,
    Disable,
    Status,
    /// Gives `user` a token (a simple token is logged, so every member knows it; a JWT is
    /// only answered). The password was checked by the accepting shard. A simple token is
    /// given as its digest ([`token_digest`]); the accepting shard answers the token itself.
    Assign {
        user: String,
        token: String,
        simple: bool,
        /// The auth revision the password was checked at: refused if it changed since.
        revision: u64,
    },
    /// The Authenticate RPC as it arrives (the accepting shard turns it into `Assign`).
    Authenticate(pb::AuthenticateRequest),
    UserAdd(pb::AuthUserAddRequest),
    UserGet(pb::AuthUserGetRequest),
    UserList,
    UserDelete(pb::AuthUserDeleteRequest),
    UserChangePassword(pb::AuthUserChangePasswordRequest),
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    RoleAdd(pb::AuthRoleAddRequest),
    RoleGet(pb::AuthRoleGetRequest),
    RoleList,
    RoleDelete(pb::AuthRoleDeleteRequest),
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
}

/// The answer to an [`AuthOp`] (headers are filled in by the caller).
#[derive(Debug)]
pub enum AuthAnswer {
    Enable(pb::AuthEnableResponse),
    Disable(pb::AuthDisableResponse),
    Status(pb::AuthStatusResponse),
    Authenticate(pb::AuthenticateResponse),
    UserAdd(pb::AuthUserAddResponse),
    UserGet(pb::AuthUserGetResponse),
    UserList(pb::AuthUserListResponse),
    UserDelete(pb::AuthUserDeleteResponse),
    UserChangePassword(pb::AuthUserChangePasswordResponse),
    UserGrantRole(pb::AuthUserGrantRoleResponse),
    UserRevokeRole(pb::AuthUserRevokeRoleResponse),
    RoleAdd(pb::AuthRoleAddResponse),
    RoleGet(pb::AuthRoleGetResponse),
    RoleList(pb::AuthRoleListResponse),
    RoleDelete(pb::AuthRoleDeleteResponse),
    RoleGrantPermission(pb::AuthRoleGrantPermissionResponse),
    RoleRevokePermission(pb::AuthRoleRevokePermissionResponse),
}

impl AuthAnswer {
    /// The header of the answer, to fill in.
    pub fn header_mut(&mut self) -> &mut Option<pb::ResponseHeader> {
        use AuthAnswer::*;
        match self {
            Enable(r) => &mut r.header,
            Disable(r) => &mut r.header,
            Status(r) => &mut r.header,
            Authenticate(r) => &mut r.header,
            UserAdd(r) => &mut r.header,
            UserGet(r) => &mut r.header,
            UserList(r) => &mut r.header,
            UserDelete(r) => &mut r.header,
            UserChangePassword(r) => &mut r.header,
            UserGrantRole(r) => &mut r.header,
            UserRevokeRole(r) => &mut r.header,
            RoleAdd(r) => &mut r.header,
            RoleGet(r) => &mut r.header,
            RoleList(r) => &mut r.header,
            RoleDelete(r) => &mut r.header,
            RoleGrantPermission(r) => &mut r.header,
            RoleRevokePermission(r) => &mut r.header,
        }
    }
}

impl AuthOp {
    /// Whether the op changes the state (and so is logged).
    pub fn is_write(&self) -> bool {
        match self {
            AuthOp::Status
            | AuthOp::Authenticate(_)
            | AuthOp::UserGet(_)
            | AuthOp::UserList
            | AuthOp::RoleGet(_)
            | AuthOp::RoleList => false,
            AuthOp::Assign { simple, .. } => *simple,
            _ => true,
        }
    }
}

impl AuthState {
    /// Applies one op, as etcd's auth store does (checks in etcd's order). `tokens` is told
    /// of tokens given and of users whose tokens are void.
    pub fn apply(&mut self, op: AuthOp, tokens: &dyn TokenSink) -> Result<AuthAnswer, EtcdError> {
        use AuthAnswer as A;
        let answer = match op {
            AuthOp::Enable => {
                if self.enabled {
                    return Ok(A::Enable(Default::default()));
                }
                let Some(root) = self.users.get(ROOT) else {
                    return Err(EtcdError::RootUserNotExist);
                };
                if !root.roles.contains(ROOT) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                self.enabled = true;
                // Enabling keeps the revision (etcd's).
                return Ok(A::Enable(Default::default()));
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(A::Disable(Default::default()));
                }
                self.enabled = false;
                tokens.void_all();
                A::Disable(Default::default())
            }
            AuthOp::Status => {
                return Ok(A::Status(pb::AuthStatusResponse {
                    header: None,
                    enabled: self.enabled,
                    auth_revision: self.revision,
                }))
            }
            AuthOp::Authenticate(_) => return Err(EtcdError::AuthFailed),
            AuthOp::Assign {
                user,
                token,
                simple,
                revision,
            } => {
                if !self.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                if revision != self.revision {
                    return Err(EtcdError::AuthOldRevision);
                }
                if self.users.get(&user).is_none_or(|u| u.no_password) {
                    return Err(EtcdError::AuthFailed);
                }
                if simple {
                    tokens.give(&token, &user, self.revision);
                }
                return Ok(A::Authenticate(pb::AuthenticateResponse {
                    header: None,
                    token,
                }));
            }
            AuthOp::UserAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(&r.name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let no_password = r.options.is_some_and(|o| o.no_password);
                let user = User {
                    hash: if no_password {
                        String::new()
                    } else {
                        r.hashed_password
                    },
                    roles: BTreeSet::new(),
                    no_password,
                };
                self.users.insert(r.name, user);
                A::UserAdd(Default::default())
            }
            AuthOp::UserGet(r) => {
                let u = self.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
                return Ok(A::UserGet(pb::AuthUserGetResponse {
                    header: None,
                    roles: u.roles.iter().cloned().collect(),
                }));
            }
            AuthOp::UserList => {
                return Ok(A::UserList(pb::AuthUserListResponse {
                    header: None,
                    users: self.users.keys().cloned().collect(),
                }))
            }
            AuthOp::UserDelete(r) => {
                if self.enabled && r.name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.users.remove(&r.name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                tokens.void_user(&r.name);
                A::UserDelete(Default::default())
            }
            AuthOp::UserChangePassword(r) => {
                let u = self.users.get_mut(&r.name).ok_or(EtcdError::UserNotFound)?;
                u.hash = r.hashed_password;
                tokens.void_user(&r.name);
                A::UserChangePassword(Default::default())
            }
            AuthOp::UserGrantRole(r) => {
                if !self.users.contains_key(&r.user) {
                    return Err(EtcdError::UserNotFound);
                }
                if r.role != ROOT && !self.roles.contains_key(&r.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let u = self.users.get_mut(&r.user).expect("checked");
                if !u.roles.insert(r.role) {
                    // Already granted: etcd ignores it, without a new revision.
                    return Ok(A::UserGrantRole(Default::default()));
                }
                A::UserGrantRole(Default::default())
            }
            AuthOp::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&r.name).ok_or(EtcdError::UserNotFound)?;
                if !u.roles.remove(&r.role) {
                    return Err(EtcdError::RoleNotGranted);
                }
                A::UserRevokeRole(Default::default())
            }
            AuthOp::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                self.roles.insert(r.name, Vec::new());
                A::RoleAdd(Default::default())
            }
            AuthOp::RoleGet(r) => {
                let perms = self.roles.get(&r.role).ok_or(EtcdError::RoleNotFound)?;
                return Ok(A::RoleGet(pb::AuthRoleGetResponse {
                    header: None,
                    perm: perms.clone(),
                }));
            }
            AuthOp::RoleList => {
                return Ok(A::RoleList(pb::AuthRoleListResponse {
                    header: None,
                    roles: self.roles.keys().cloned().collect(),
                }))
            }
            AuthOp::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.roles.remove(&r.role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                // Users lose the role too (etcd 3.5).
                for u in self.users.values_mut() {
                    u.roles.remove(&r.role);
                }
                A::RoleDelete(Default::default())
            }
            AuthOp::RoleGrantPermission(r) => {
                let perms = self.roles.get_mut(&r.name).ok_or(EtcdError::RoleNotFound)?;
                let Some(p) = r.perm else {
                    return Err(EtcdError::PermissionNotGiven);
                };
                if !valid_range(&p.key, &p.range_end) {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                match perms
                    .iter_mut()
                    .find(|q| q.key == p.key && q.range_end == p.range_end)
                {
                    Some(q) => q.perm_type = p.perm_type,
                    None => {
                        perms.push(p);
                        perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                A::RoleGrantPermission(Default::default())
            }
            AuthOp::RoleRevokePermission(r) => {
                let perms = self.roles.get_mut(&r.role).ok_or(EtcdError::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|q| !(q.key == r.key && q.range_end == r.range_end));
                if perms.len() == before {
                    return Err(EtcdError::PermissionNotGranted);
                }
                A::RoleRevokePermission(Default::default())
            }
        };
        self.revision += 1;
        Ok(answer)
    }

    /// Whether `user` has the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }
}

/// etcd's `isValidPermissionRange`: a key, and an end that is empty (one key), after the key,
/// or `"\0"` (every key from it on).
fn valid_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

/// Where the state's changes to the tokens go (the shared token table on a server).
pub trait TokenSink {
    fn give(&self, token: &str, user: &str, revision: u64);
    fn void_user(&self, user: &str);
    fn void_all(&self);
}

/// A key interval: `[start, end)`, `end` None meaning no upper bound.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// The interval etcd means by `key` and `range_end`: one key when `range_end` is empty, every
/// key from `key` on when it is `"\0"`.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            Interval {
                start: key.to_vec(),
                end: Some(end),
            }
        }
        [0] => Interval {
            start: key.to_vec(),
            end: None,
        },
        end => Interval {
            start: key.to_vec(),
            end: Some(end.to_vec()),
        },
    }
}

/// A user's permissions as merged, sorted, disjoint intervals (etcd's range permission cache).
#[derive(Clone, Debug, Default)]
pub struct Perms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.retain(|i| i.end.as_ref().is_none_or(|e| *e > i.start));
    v.sort_by(|a, b| a.start.cmp(&b.start));
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for i in v {
        if let Some(last) = out.last_mut() {
            let touches = last.end.as_ref().is_none_or(|e| *e >= i.start);
            if touches {
                last.end = match (&last.end, &i.end) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b).clone()),
                };
                continue;
            }
        }
        out.push(i);
    }
    out
}

fn covers(set: &[Interval], want: &Interval) -> bool {
    // The last interval starting at or before `want.start` must reach `want.end`.
    let i = set.partition_point(|i| i.start <= want.start);
    let Some(i) = i.checked_sub(1).map(|i| &set[i]) else {
        return false;
    };
    match (&i.end, &want.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(have), Some(w)) => have >= w && *have > want.start,
    }
}

impl Perms {
    /// The permissions of `user` in `state`.
    pub fn of(state: &AuthState, user: &str) -> Perms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        if let Some(u) = state.users.get(user) {
            for role in &u.roles {
                for p in state.roles.get(role).into_iter().flatten() {
                    let i = interval(&p.key, &p.range_end);
                    let t = authpb::permission::Type::try_from(p.perm_type)
                        .unwrap_or(authpb::permission::Type::Read);
                    use authpb::permission::Type::*;
                    if matches!(t, Read | Readwrite) {
                        read.push(i.clone());
                    }
                    if matches!(t, Write | Readwrite) {
                        write.push(i);
                    }
                }
            }
        }
        Perms {
            read: merge(read),
            write: merge(write),
        }
    }

    /// Whether the permissions cover `[key, range_end)` (etcd's conventions) for `access`.
    pub fn allows(&self, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let mut want = interval(key, range_end);
        // An empty or inverted range reads nothing; etcd checks its first key.
        if want.end.as_ref().is_some_and(|e| *e <= want.start) {
            want = interval(key, &[]);
        }
        covers(set, &want)
    }
}

/// An immutable copy of the auth state with each user's merged permissions, read by every
/// shard.
#[derive(Debug, Default)]
pub struct AuthView {
    pub state: AuthState,
    perms: HashMap<String, Perms>,
}

impl AuthView {
    pub fn new(state: AuthState) -> AuthView {
        let perms = state
            .users
            .keys()
            .map(|u| (u.clone(), Perms::of(&state, u)))
            .collect();
        AuthView { state, perms }
    }

    /// Whether `user` may access `[key, range_end)`: root may do anything.
    pub fn allows(&self, user: &str, key: &[u8], range_end: &[u8], access: Access) -> bool {
        if self.state.is_admin(user) {
            return true;
        }
        self.perms
            .get(user)
            .is_some_and(|p| p.allows(key, range_end, access))
    }
}

/// How tokens are made and checked (`--auth-token`).
#[derive(Clone, Debug)]
pub enum TokenKind {
    /// etcd's simple tokens: random, kept in memory on every member (the grant is logged),
    /// valid for `--auth-token-ttl` after their last use.
    Simple,
    /// JSON Web Tokens, signed and checked with these keys.
    Jwt(Arc<Jwt>),
}

/// The shortest shared secret accepted as a bare `--auth-token` value.
pub const SECRET_MIN_BYTES: usize = 16;

impl TokenKind {
    /// Reads `--auth-token`: `simple`; etcd's `jwt,pub-key=<file>,priv-key=<file>,
    /// sign-method=<alg>[,ttl=<duration>]`; or a bare shared secret (the seed's
    /// `auth-token: "some-secret-token"`), which signs HS256 JWTs valid for 5 minutes.
    pub fn from_spec(spec: &str) -> Result<TokenKind, String> {
        let bad = |why: String| Err(format!("auth-token {spec:?}: {why}"));
        if spec == "simple" {
            return Ok(TokenKind::Simple);
        }
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default();
        if kind != "jwt" {
            if spec.contains(',') || spec.contains('=') || spec.trim() != spec {
                return bad(
                    "not simple, jwt,... or a bare shared secret (no ',', '=' or spaces)".into(),
                );
            }
            if spec.len() < SECRET_MIN_BYTES {
                return bad(format!(
                    "a shared secret must be at least {SECRET_MIN_BYTES} bytes"
                ));
            }
            let key = spec.as_bytes();
            return Ok(TokenKind::Jwt(Arc::new(Jwt {
                algorithm: jsonwebtoken::Algorithm::HS256,
                encoding: jsonwebtoken::EncodingKey::from_secret(key),
                decoding: jsonwebtoken::DecodingKey::from_secret(key),
                ttl: Duration::from_secs(300),
            })));
        }
        let mut opts: HashMap<&str, &str> = HashMap::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=').filter(|(_, v)| !v.contains('=')) else {
                return bad(format!("option {p:?} is not key=value"));
            };
            if opts.insert(k, v).is_some() {
                return bad(format!("option {k} given twice"));
            }
        }
        let Some(method) = opts.get("sign-method") else {
            return bad("jwt needs sign-method".into());
        };
        let algorithm: jsonwebtoken::Algorithm = method
            .parse()
            .map_err(|_| format!("auth-token {spec:?}: unknown sign-method {method}"))?;
        let ttl = match opts.get("ttl") {
            None => Duration::from_secs(300),
            Some(t) => crate::config::parse_go_duration(t)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("auth-token {spec:?}: invalid ttl {t:?}"))?,
        };
        let read = |k: &str| -> Result<Vec<u8>, String> {
            let path = opts
                .get(k)
                .ok_or_else(|| format!("auth-token {spec:?}: jwt with {method} needs {k}"))?;
            std::fs::read(path).map_err(|e| format!("auth-token: cannot read {k} {path}: {e}"))
        };
        use jsonwebtoken::Algorithm::*;
        let (encoding, decoding) = match algorithm {
            HS256 | HS384 | HS512 => {
                let k = read("priv-key")?;
                (
                    jsonwebtoken::EncodingKey::from_secret(&k),
                    jsonwebtoken::DecodingKey::from_secret(&k),
                )
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let e = |x: jsonwebtoken::errors::Error| format!("auth-token: bad key: {x}");
                (
                    jsonwebtoken::EncodingKey::from_rsa_pem(&read("priv-key")?).map_err(e)?,
                    jsonwebtoken::DecodingKey::from_rsa_pem(&read("pub-key")?).map_err(e)?,
                )
            }
            ES256 | ES384 => {
                let e = |x: jsonwebtoken::errors::Error| format!("auth-token: bad key: {x}");
                (
                    jsonwebtoken::EncodingKey::from_ec_pem(&read("priv-key")?).map_err(e)?,
                    jsonwebtoken::DecodingKey::from_ec_pem(&read("pub-key")?).map_err(e)?,
                )
            }
            other => return bad(format!("sign-method {other:?} is not supported")),
        };
        Ok(TokenKind::Jwt(Arc::new(Jwt {
            algorithm,
            encoding,
            decoding,
            ttl,
        })))
    }
}

/// A JWT signer and verifier.
pub struct Jwt {
    pub algorithm: jsonwebtoken::Algorithm,
    pub encoding: jsonwebtoken::EncodingKey,
    pub decoding: jsonwebtoken::DecodingKey,
    pub ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jwt({:?}, ttl {:?})", self.algorithm, self.ttl)
    }
}

/// The claims of ferrocd's (and etcd's) JWTs.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl Jwt {
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, EtcdError> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + self.ttl;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: exp.as_secs(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.algorithm),
            &claims,
            &self.encoding,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "auth: signing a token failed");
            EtcdError::AuthFailed
        })
    }

    fn check(&self, token: &str) -> Option<(String, u64)> {
        let mut v = jsonwebtoken::Validation::new(self.algorithm);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

/// A simple token's owner, the auth revision it was given at, and when it lapses.
#[derive(Debug)]
struct Simple {
    user: String,
    revision: u64,
    lapses: Instant,
}

/// At most this many simple tokens are kept; beyond it the one closest to lapsing goes.
pub const SIMPLE_TOKENS_MAX: usize = 100_000;

/// Failed Authenticate calls per user name: after `FAILURES_FREE` failures, each further
/// attempt must wait twice as long as the last (from 100 ms, at most `BACKOFF_MAX`).
const FAILURES_FREE: u32 = 3;
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most this many names are tracked (the oldest entries are dropped first).
const FAILURE_NAMES_MAX: usize = 10_000;

#[derive(Debug)]
struct Failures {
    count: u32,
    /// No attempt is checked before this instant.
    not_before: Instant,
}

/// The auth state as every shard of a server sees it.
#[derive(Debug)]
pub struct AuthShared {
    enabled: AtomicBool,
    view: RwLock<Arc<AuthView>>,
    simple: Mutex<HashMap<String, Simple>>,
    failures: Mutex<HashMap<String, Failures>>,
    pub kind: TokenKind,
    /// `--auth-token-ttl` (simple tokens).
    pub ttl: Duration,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// `--enable-authorization`: serve no keys until auth is enabled.
    pub required: bool,
}

impl Default for AuthShared {
    fn default() -> Self {
        AuthShared::new(TokenKind::Simple, Duration::from_secs(300), 10, false)
    }
}

/// Who a caller is, once its token (or certificate) was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    /// The auth revision the caller's token was given at.
    pub revision: u64,
}

impl AuthShared {
    pub fn new(kind: TokenKind, ttl: Duration, bcrypt_cost: u32, required: bool) -> AuthShared {
        AuthShared {
            enabled: AtomicBool::new(false),
            view: RwLock::new(Arc::new(AuthView::default())),
            simple: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            kind,
            ttl,
            bcrypt_cost,
            required,
        }
    }

    /// Whether auth is enabled (one atomic load: the fast path of every call).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn view(&self) -> Arc<AuthView> {
        self.view.read().expect("auth view lock").clone()
    }

    /// Publishes the state after a change (the owner, after applying).
    pub fn publish(&self, state: &AuthState) {
        let view = Arc::new(AuthView::new(state.clone()));
        *self.view.write().expect("auth view lock") = view;
        self.enabled.store(state.enabled, Ordering::Release);
    }

    /// The caller a token stands for: etcd's "invalid auth token" for one that is unknown,
    /// lapsed, or badly signed.
    pub fn check_token(&self, token: &str) -> Result<Caller, EtcdError> {
        match &self.kind {
            TokenKind::Simple => {
                let key = token_digest(token);
                let mut t = self.simple.lock().expect("token lock");
                let now = Instant::now();
                match t.get_mut(&key) {
                    Some(s) if s.lapses > now => {
                        // Each use keeps it alive for another TTL (etcd's).
                        s.lapses = now + self.ttl;
                        Ok(Caller {
                            user: s.user.clone(),
                            revision: s.revision,
                        })
                    }
                    Some(_) => {
                        t.remove(&key);
                        Err(EtcdError::InvalidAuthToken)
                    }
                    None => Err(EtcdError::InvalidAuthToken),
                }
            }
            TokenKind::Jwt(j) => j
                .check(token)
                .map(|(user, revision)| Caller { user, revision })
                .ok_or(EtcdError::InvalidAuthToken),
        }
    }

    /// Refuses an Authenticate for `user` that comes too soon after failed ones.
    pub fn may_try(&self, user: &str) -> Result<(), EtcdError> {
        let f = self.failures.lock().expect("failures lock");
        match f.get(user) {
            Some(x) if x.not_before > Instant::now() => Err(EtcdError::TooManyAuthFailures),
            _ => Ok(()),
        }
    }

    /// Notes the outcome of a password check for `user`.
    pub fn tried(&self, user: &str, ok: bool) {
        let mut f = self.failures.lock().expect("failures lock");
        if ok {
            f.remove(user);
            return;
        }
        let now = Instant::now();
        if f.len() >= FAILURE_NAMES_MAX && !f.contains_key(user) {
            // Forget the entry that allows an attempt soonest.
            if let Some(k) = f
                .iter()
                .min_by_key(|(_, x)| x.not_before)
                .map(|(k, _)| k.clone())
            {
                f.remove(&k);
            }
        }
        let e = f.entry(user.to_string()).or_insert(Failures {
            count: 0,
            not_before: now,
        });
        e.count += 1;
        if e.count > FAILURES_FREE {
            let shift = (e.count - FAILURES_FREE - 1).min(16);
            let wait = (Duration::from_millis(100) * (1u32 << shift)).min(BACKOFF_MAX);
            e.not_before = now + wait;
        }
    }

    /// How many simple tokens are alive (for tests and metrics).
    pub fn simple_tokens(&self) -> usize {
        self.simple.lock().expect("token lock").len()
    }
}

impl TokenSink for AuthShared {
    /// `token` is the digest of the token ([`token_digest`]).
    fn give(&self, token: &str, user: &str, revision: u64) {
        let mut t = self.simple.lock().expect("token lock");
        let now = Instant::now();
        if t.len() >= SIMPLE_TOKENS_MAX {
            t.retain(|_, s| s.lapses > now);
            if t.len() >= SIMPLE_TOKENS_MAX {
                if let Some(k) = t
                    .iter()
                    .min_by_key(|(_, s)| s.lapses)
                    .map(|(k, _)| k.clone())
                {
                    t.remove(&k);
                }
            }
        }
        t.insert(
            token.to_string(),
            Simple {
                user: user.to_string(),
                revision,
                lapses: now + self.ttl,
            },
        );
    }

    fn void_user(&self, user: &str) {
        self.simple
            .lock()
            .expect("token lock")
            .retain(|_, s| s.user != user);
    }

    fn void_all(&self) {
        self.simple.lock().expect("token lock").clear();
    }
}

/// What the state keeps (and logs) of a simple token: its SHA-256, in hex. The log and the
/// token table never hold a token a client could present.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new simple token: 16 random letters, a dot, and a counter (etcd's form).
pub fn new_simple_token() -> String {
    use ring::rand::SecureRandom;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    let mut s: String = bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect();
    s.push('.');
    s.push_str(&COUNTER.fetch_add(1, Ordering::Relaxed).to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoTokens;
    impl TokenSink for NoTokens {
        fn give(&self, _: &str, _: &str, _: u64) {}
        fn void_user(&self, _: &str) {}
        fn void_all(&self) {}
    }

    fn perm(t: authpb::permission::Type, key: &str, end: &[u8]) -> authpb::Permission {
        authpb::Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.to_vec().into(),
        }
    }

    fn apply(s: &mut AuthState, op: AuthOp) -> Result<AuthAnswer, EtcdError> {
        s.apply(op, &NoTokens)
    }

    #[test]
    fn enabling_needs_root_with_the_root_role() {
        let mut s = AuthState::default();
        assert_eq!(s.revision, 1);
        assert_eq!(
            apply(&mut s, AuthOp::Enable).unwrap_err(),
            EtcdError::RootUserNotExist
        );
        apply(
            &mut s,
            AuthOp::UserAdd(pb::AuthUserAddRequest {
                name: ROOT.into(),
                hashed_password: "h".into(),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(
            apply(&mut s, AuthOp::Enable).unwrap_err(),
            EtcdError::RootRoleNotExist
        );
        let grant = pb::AuthUserGrantRoleRequest {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        apply(&mut s, AuthOp::UserGrantRole(grant.clone())).unwrap();
        let rev = s.revision;
        apply(&mut s, AuthOp::UserGrantRole(grant)).unwrap();
        assert_eq!(s.revision, rev, "a repeated grant changes nothing");
        apply(&mut s, AuthOp::Enable).unwrap();
        assert!(s.enabled);
        assert_eq!(
            apply(
                &mut s,
                AuthOp::UserDelete(pb::AuthUserDeleteRequest { name: ROOT.into() })
            )
            .unwrap_err(),
            EtcdError::InvalidAuthMgmt
        );
        assert_eq!(
            apply(
                &mut s,
                AuthOp::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                    name: ROOT.into(),
                    role: ROOT.into()
                })
            )
            .unwrap_err(),
            EtcdError::InvalidAuthMgmt
        );
        assert!(s.is_admin(ROOT));
    }

    #[test]
    fn permissions_merge_and_cover_ranges() {
        use authpb::permission::Type::*;
        let mut s = AuthState::default();
        for (name, op) in [
            (
                "u",
                AuthOp::UserAdd(pb::AuthUserAddRequest {
                    name: "u".into(),
                    ..Default::default()
                }),
            ),
            (
                "r",
                AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() }),
            ),
        ] {
            apply(&mut s, op).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for p in [
            perm(Read, "a", b"c"),
            perm(Readwrite, "c", b"e"),
            perm(Write, "k", b""),
            perm(Read, "z", b"\0"),
        ] {
            apply(
                &mut s,
                AuthOp::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: "r".into(),
                    perm: Some(p),
                }),
            )
            .unwrap();
        }
        apply(
            &mut s,
            AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest {
                user: "u".into(),
                role: "r".into(),
            }),
        )
        .unwrap();
        let v = AuthView::new(s.clone());
        let ok = |k: &str, e: &[u8], a| v.allows("u", k.as_bytes(), e, a);
        assert!(ok("a", b"", Access::Read));
        assert!(
            ok("a", b"e", Access::Read),
            "two adjacent grants cover [a, e)"
        );
        assert!(!ok("a", b"e\0", Access::Read));
        assert!(!ok("a", b"c", Access::Write));
        assert!(ok("c", b"e", Access::Write));
        assert!(ok("k", b"", Access::Write));
        assert!(!ok("k", b"", Access::Read));
        assert!(!ok("k\0", b"", Access::Write));
        assert!(ok("z", b"\0", Access::Read), "from-key");
        assert!(ok("zzz", b"", Access::Read));
        assert!(!ok("y", b"\0", Access::Read));
        assert!(!ok("", b"\0", Access::Read));
        assert!(!v.allows("nobody", b"a", b"", Access::Read));
        // Revoking needs the exact key and range end.
        assert_eq!(
            apply(
                &mut s,
                AuthOp::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: b"a".to_vec().into(),
                    range_end: b"b".to_vec().into(),
                })
            )
            .unwrap_err(),
            EtcdError::PermissionNotGranted
        );
        // Deleting the role takes it from the user.
        apply(
            &mut s,
            AuthOp::RoleDelete(pb::AuthRoleDeleteRequest { role: "r".into() }),
        )
        .unwrap();
        assert!(s.users["u"].roles.is_empty());
        assert!(!AuthView::new(s).allows("u", b"a", b"", Access::Read));
    }

    #[test]
    fn token_settings_are_read_or_refused_clearly() {
        assert!(matches!(
            TokenKind::from_spec("simple"),
            Ok(TokenKind::Simple)
        ));
        let Ok(TokenKind::Jwt(j)) = TokenKind::from_spec("some-secret-token") else {
            panic!("a bare secret makes HS256 JWTs");
        };
        let t = j.sign("u", 4).unwrap();
        assert_eq!(j.check(&t), Some(("u".to_string(), 4)));
        assert_eq!(j.check(&format!("{t}x")), None, "a bad signature");
        let Ok(TokenKind::Jwt(other)) = TokenKind::from_spec("another-secret-token") else {
            panic!()
        };
        assert_eq!(other.check(&t), None, "another secret");
        for bad in [
            "short",
            "a,b",
            "jwt",
            "jwt,sign-method=XX256",
            "jwt,sign-method=HS256",
            "jwt,sign-method=HS256,priv-key=/nonexistent",
            "jwt,sign-method",
            "jwt,sign-method=HS256,sign-method=HS256",
            "key=value-is-not-a-secret",
        ] {
            let e = TokenKind::from_spec(bad).unwrap_err();
            assert!(e.contains("auth-token"), "{bad}: {e}");
        }
    }

    /// An independent model of etcd's rules: a point is allowed when some granted interval
    /// holds it; a range when every point of it is. Membership in a union of half-open
    /// intervals changes only at their ends, so checking the range's start and every interval
    /// end inside the range is exact.
    fn model_allows(perms: &[(Access, Interval)], want: &Interval, access: Access) -> bool {
        let holds = |p: &[u8]| {
            perms.iter().any(|(a, i)| {
                *a == access && i.start.as_slice() <= p && i.end.as_ref().is_none_or(|e| p < &e[..])
            })
        };
        let inside =
            |p: &[u8]| want.start.as_slice() <= p && want.end.as_ref().is_none_or(|e| p < &e[..]);
        let mut points = vec![want.start.clone()];
        for (_, i) in perms {
            points.push(i.start.clone());
            points.extend(i.end.clone());
        }
        points.iter().filter(|p| inside(p)).all(|p| holds(p))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, .. Default::default() })]

        #[test]
        fn permission_checks_agree_with_a_model(
            grants in proptest::collection::vec((0u8..3, "[ab]{1,3}", 0u8..3, "[ab]{0,3}"), 0..6),
            key in "[ab]{0,3}",
            end_kind in 0u8..3,
            end in "[ab]{0,3}",
            write in proptest::prelude::any::<bool>(),
        ) {
            use authpb::permission::Type::*;
            let mut s = AuthState::default();
            let add = |s: &mut AuthState, op| s.apply(op, &NoTokens).map(drop);
            add(&mut s, AuthOp::UserAdd(pb::AuthUserAddRequest { name: "u".into(), ..Default::default() })).unwrap();
            add(&mut s, AuthOp::RoleAdd(pb::AuthRoleAddRequest { name: "r".into() })).unwrap();
            add(&mut s, AuthOp::UserGrantRole(pb::AuthUserGrantRoleRequest { user: "u".into(), role: "r".into() })).unwrap();
            let mut model = Vec::new();
            for (t, k, kind, e) in &grants {
                let range_end: Vec<u8> = match kind {
                    0 => vec![],
                    1 => vec![0],
                    _ => e.as_bytes().to_vec(),
                };
                let t = [Read, Write, Readwrite][*t as usize];
                let p = authpb::Permission {
                    perm_type: t as i32,
                    key: k.as_bytes().to_vec().into(),
                    range_end: range_end.clone().into(),
                };
                let granted = add(&mut s, AuthOp::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: "r".into(),
                    perm: Some(p),
                }));
                if granted.is_err() {
                    // etcd refuses an end at or before the key.
                    proptest::prop_assert!(!range_end.is_empty() && range_end != [0] && range_end.as_slice() <= k.as_bytes());
                    continue;
                }
                // A grant of the same key and end replaces the earlier one's type.
                model.retain(|(_, kk, ee): &(authpb::permission::Type, Vec<u8>, Vec<u8>)| !(kk == k.as_bytes() && *ee == range_end));
                model.push((t, k.as_bytes().to_vec(), range_end));
            }
            let intervals: Vec<(Access, Interval)> = model
                .iter()
                .flat_map(|(t, k, e)| {
                    let i = interval(k, e);
                    let mut v = Vec::new();
                    if matches!(t, Read | Readwrite) {
                        v.push((Access::Read, i.clone()));
                    }
                    if matches!(t, Write | Readwrite) {
                        v.push((Access::Write, i));
                    }
                    v
                })
                .collect();
            let range_end: Vec<u8> = match end_kind {
                0 => vec![],
                1 => vec![0],
                _ => end.as_bytes().to_vec(),
            };
            let access = if write { Access::Write } else { Access::Read };
            let mut want = interval(key.as_bytes(), &range_end);
            if want.end.as_ref().is_some_and(|e| *e <= want.start) {
                want = interval(key.as_bytes(), &[]);
            }
            let view = AuthView::new(s);
            proptest::prop_assert_eq!(
                view.allows("u", key.as_bytes(), &range_end, access),
                model_allows(&intervals, &want, access),
                "grants {:?}, request [{:?}, {:?}) {:?}", model, key, range_end, access
            );
        }
    }

    #[test]
    fn a_lapsed_jwt_is_refused() {
        let key = b"a-secret-of-enough-bytes";
        let j = Jwt {
            algorithm: jsonwebtoken::Algorithm::HS256,
            encoding: jsonwebtoken::EncodingKey::from_secret(key),
            decoding: jsonwebtoken::DecodingKey::from_secret(key),
            ttl: Duration::from_secs(1),
        };
        let t = j.sign("u", 3).unwrap();
        assert_eq!(j.check(&t), Some(("u".to_string(), 3)));
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(j.check(&t), None, "lapsed");
        let a = AuthShared::new(
            TokenKind::Jwt(Arc::new(j)),
            Duration::from_secs(1),
            4,
            false,
        );
        assert_eq!(a.check_token(&t), Err(EtcdError::InvalidAuthToken));
    }

    #[test]
    fn failed_attempts_back_off() {
        let a = AuthShared::default();
        for _ in 0..FAILURES_FREE {
            a.may_try("u").unwrap();
            a.tried("u", false);
        }
        a.may_try("u").unwrap();
        a.tried("u", false);
        assert_eq!(a.may_try("u"), Err(EtcdError::TooManyAuthFailures));
        assert!(a.may_try("other").is_ok());
        a.tried("u", true);
        assert!(a.may_try("u").is_ok());
    }

    #[test]
    fn simple_tokens_lapse_and_are_voided() {
        let a = AuthShared::new(TokenKind::Simple, Duration::from_millis(50), 4, false);
        let t = new_simple_token();
        assert_eq!(t.split('.').next().unwrap().len(), 16);
        a.give(&token_digest(&t), "u", 7);
        assert_eq!(
            a.check_token(&token_digest(&t)),
            Err(EtcdError::InvalidAuthToken)
        );
        assert_eq!(
            a.check_token(&t).unwrap(),
            Caller {
                user: "u".into(),
                revision: 7
            }
        );
        a.void_user("u");
        assert_eq!(a.check_token(&t), Err(EtcdError::InvalidAuthToken));
        a.give(&token_digest(&t), "u", 7);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(a.check_token(&t), Err(EtcdError::InvalidAuthToken));
    }
}
