//! Who a caller is and what it may do, decided on the shard that accepted the call before its
//! request leaves for the owner (etcd's checks, `docs/auth.md`).
//!
//! With auth disabled this costs one atomic load per call. With auth enabled the caller's
//! token (or TLS certificate name) is checked, then its permissions against the published auth
//! view; a request that touches keys leaves wrapped in [`kv::Authed`] with the auth revision
//! it was checked at, and the owner refuses it if the auth state changed meanwhile
//! ("revision of auth store is old", which clients answer by authenticating again).

use crate::auth::{self, Access, AuthOp, AuthShared, AuthView, Caller, TokenKind};
use crate::error::{EtcdError, Status};
use crate::kv::{self, Request, Response};
use crate::proto::etcdserverpb as pb;
use crate::proto::{v3electionpb as el, v3lockpb as lk};

use super::ShardCtx;

/// What a call brought to prove who it is.
#[derive(Clone, Debug, Default)]
pub(crate) struct Credentials {
    /// gRPC metadata `token` (or `authorization`, as the gateway sends it).
    pub token: Option<String>,
    /// The common name of a verified client certificate (with `--client-cert-auth`).
    pub common_name: Option<std::rc::Rc<str>>,
}

impl Credentials {
    /// From gRPC metadata or HTTP headers: `token`, else `authorization` (a leading
    /// "Bearer " dropped, as etcd 3.5).
    pub fn from_headers(h: &http::HeaderMap) -> Credentials {
        // A ready header name: looking one up by a string parses the name on every call.
        static TOKEN: http::HeaderName = http::HeaderName::from_static("token");
        let token = h
            .get(&TOKEN)
            .or_else(|| h.get(http::header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
        Credentials {
            token,
            common_name: None,
        }
    }
}

/// Runs a call on the state for the caller: the auth checks, then the owner.
pub(crate) async fn call(
    ctx: &ShardCtx,
    cred: &Credentials,
    req: Request,
) -> Result<Response, Status> {
    let auth = &*ctx.auth;
    if let Request::Auth(op) = req {
        // Boxed: the rare path's large state stays out of every call's future (moved when the
        // call's task is spawned).
        return Box::pin(auth_call(ctx, cred, op))
            .await
            .map_err(Status::from);
    }
    if !auth.enabled() {
        if auth.required && !open_before_auth(&req) {
            return Err(EtcdError::PermissionDenied.into());
        }
        return ctx.owner.call(req).await.map_err(Status::from);
    }
    let view = auth.view();
    let caller = identify(auth, &view, cred)?;
    let req = authorize(&view, caller.as_ref(), req)?;
    ctx.owner.call(req).await.map_err(Status::from)
}

/// With `--enable-authorization` and auth not enabled yet, only what it takes to enable it
/// is served (and what reads no keys).
fn open_before_auth(req: &Request) -> bool {
    matches!(
        req,
        Request::Status(_) | Request::MemberList(_) | Request::Auth(_)
    ) || matches!(req, Request::Alarm(a) if a.action == pb::alarm_request::AlarmAction::Get as i32)
}

/// The caller, from its token or certificate; None without either.
pub(crate) fn identify(
    auth: &AuthShared,
    view: &AuthView,
    cred: &Credentials,
) -> Result<Option<Caller>, EtcdError> {
    if let Some(t) = &cred.token {
        let mut c = auth.check_token(t)?;
        if matches!(auth.kind, TokenKind::Simple) {
            // A simple token stands for its user at the current revision (etcd's).
            c.revision = view.state.revision;
        }
        return Ok(Some(c));
    }
    Ok(cred.common_name.as_ref().map(|cn| Caller {
        user: cn.to_string(),
        revision: view.state.revision,
    }))
}

/// etcd's `isOpPermitted` before the key checks: a caller, a current revision, a known user.
fn keyed<'a>(view: &AuthView, caller: Option<&'a Caller>) -> Result<&'a Caller, EtcdError> {
    let c = caller.ok_or(EtcdError::UserEmpty)?;
    if c.revision < view.state.revision {
        return Err(EtcdError::AuthOldRevision);
    }
    if !view.state.users.contains_key(&c.user) {
        return Err(EtcdError::PermissionDenied);
    }
    Ok(c)
}

/// etcd's `IsAdminPermitted`.
fn admin(view: &AuthView, caller: Option<&Caller>) -> Result<(), EtcdError> {
    let c = caller.ok_or(EtcdError::UserEmpty)?;
    if !view.state.users.contains_key(&c.user) {
        return Err(EtcdError::UserNotFound);
    }
    if !view.state.is_admin(&c.user) {
        return Err(EtcdError::PermissionDenied);
    }
    Ok(())
}

/// One key check: `[key, range_end)` for `access`.
type Check<'r> = (&'r [u8], &'r [u8], Access);

fn txn_checks<'r>(t: &'r pb::TxnRequest, out: &mut Vec<Check<'r>>) {
    use pb::request_op::Request as Op;
    for c in &t.compare {
        out.push((&c.key, &c.range_end, Access::Read));
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => out.push((&r.key, &r.range_end, Access::Read)),
            Some(Op::RequestPut(p)) => put_checks(p, out),
            Some(Op::RequestDeleteRange(d)) => delete_checks(d, out),
            Some(Op::RequestTxn(t)) => txn_checks(t, out),
            None => {}
        }
    }
}

fn put_checks<'r>(p: &'r pb::PutRequest, out: &mut Vec<Check<'r>>) {
    out.push((&p.key, &[], Access::Write));
    if p.prev_kv {
        out.push((&p.key, &[], Access::Read));
    }
}

fn delete_checks<'r>(d: &'r pb::DeleteRangeRequest, out: &mut Vec<Check<'r>>) {
    out.push((&d.key, &d.range_end, Access::Write));
    if d.prev_kv {
        out.push((&d.key, &d.range_end, Access::Read));
    }
}

/// Checks a request for the caller; returns it as it goes to the owner.
pub(crate) fn authorize(
    view: &AuthView,
    caller: Option<&Caller>,
    req: Request,
) -> Result<Request, EtcdError> {
    let mut checks = Vec::new();
    match &req {
        Request::Range(r) => checks.push((&r.key[..], &r.range_end[..], Access::Read)),
        Request::Put(p) => put_checks(p, &mut checks),
        Request::DeleteRange(d) => delete_checks(d, &mut checks),
        Request::Txn(t) => txn_checks(t, &mut checks),
        // Checked by the owner, against the keys the lease holds then.
        Request::LeaseRevoke(_)
        | Request::LeaseTimeToLive(_)
        | Request::LeaseLeases(_)
        | Request::LeaseKeepAlive(_) => {}
        // Any authenticated user (etcd 3.5.29 and later).
        Request::LeaseGrant(_) | Request::Status(_) | Request::MemberList(_) => {
            keyed(view, caller)?;
            return Ok(req);
        }
        Request::Alarm(a) if a.action == pb::alarm_request::AlarmAction::Get as i32 => {
            keyed(view, caller)?;
            return Ok(req);
        }
        Request::Compact(_)
        | Request::Defragment(_)
        | Request::Alarm(_)
        | Request::MoveLeader(_)
        | Request::MemberAdd(_)
        | Request::MemberRemove(_)
        | Request::MemberPromote(_)
        | Request::MemberUpdate(_) => {
            admin(view, caller)?;
            return Ok(req);
        }
        // Internal requests do not come from callers.
        Request::LeaseExpire(_)
        | Request::LeaseCheckpoint(_)
        | Request::WatchPull(_)
        | Request::Checkpoint(_)
        | Request::Auth(_)
        | Request::Authed(_) => return Ok(req),
    }
    let c = keyed(view, caller)?;
    if checks
        .iter()
        .any(|&(k, e, a)| !view.allows(&c.user, k, e, a))
    {
        return Err(EtcdError::PermissionDenied);
    }
    Ok(Request::Authed(Box::new(kv::Authed {
        revision: c.revision,
        user: c.user.clone(),
        req,
    })))
}

/// The auth view a call is checked against, and its caller.
type Checked = (std::sync::Arc<AuthView>, Option<Caller>);

/// With auth enabled: the published view and the caller (None without a token or
/// certificate). None when auth is disabled and the call may go on; "permission denied" then
/// with `--enable-authorization`.
fn enabled(ctx: &ShardCtx, cred: &Credentials) -> Result<Option<Checked>, EtcdError> {
    let auth = &*ctx.auth;
    if !auth.enabled() {
        if auth.required {
            return Err(EtcdError::PermissionDenied);
        }
        return Ok(None);
    }
    let view = auth.view();
    let caller = identify(auth, &view, cred)?;
    Ok(Some((view, caller)))
}

/// Whether the caller may watch `[key, range_end)` (checked when a watcher is created; an
/// empty key means `"\0"`, as etcd's).
pub(crate) fn may_watch(
    ctx: &ShardCtx,
    cred: &Credentials,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), EtcdError> {
    let Some((view, caller)) = enabled(ctx, cred)? else {
        return Ok(());
    };
    let c = keyed(&view, caller.as_ref())?;
    let key: &[u8] = if key.is_empty() { b"\0" } else { key };
    if !view.allows(&c.user, key, range_end, Access::Read) {
        return Err(EtcdError::PermissionDenied);
    }
    Ok(())
}

/// Whether the caller may keep leases alive (any authenticated user).
pub(crate) fn may_keep_alive(ctx: &ShardCtx, cred: &Credentials) -> Result<(), EtcdError> {
    let Some((view, caller)) = enabled(ctx, cred)? else {
        return Ok(());
    };
    keyed(&view, caller.as_ref()).map(drop)
}

/// The lock and election services run etcd's recipes with the caller's rights: reading and
/// writing under `<name>/` (a lock or a campaign), reading it (leader, observe), writing one
/// key (unlock, resign, proclaim).
pub(crate) fn may_use_recipe(
    ctx: &ShardCtx,
    cred: &Credentials,
    what: Recipe<'_>,
) -> Result<(), EtcdError> {
    let Some((view, caller)) = enabled(ctx, cred)? else {
        return Ok(());
    };
    let c = keyed(&view, caller.as_ref())?;
    let prefix = |name: &[u8]| {
        let mut p = name.to_vec();
        p.push(b'/');
        let end = kv::prefix_end(&p);
        (p, end)
    };
    let ok = match what {
        Recipe::Lock(name) => {
            let (p, end) = prefix(name);
            view.allows(&c.user, &p, &end, Access::Read)
                && view.allows(&c.user, &p, &end, Access::Write)
        }
        Recipe::Read(name) => {
            let (p, end) = prefix(name);
            view.allows(&c.user, &p, &end, Access::Read)
        }
        Recipe::Key(key) => view.allows(&c.user, key, &[], Access::Write),
    };
    if ok {
        Ok(())
    } else {
        Err(EtcdError::PermissionDenied)
    }
}

/// What a lock or election call touches ([`may_use_recipe`]).
pub(crate) enum Recipe<'a> {
    /// Lock, Campaign: a name's keys, read and written.
    Lock(&'a [u8]),
    /// Leader, Observe: a name's keys, read.
    Read(&'a [u8]),
    /// Unlock, Resign, Proclaim: one key, written.
    Key(&'a [u8]),
}

impl<'a> Recipe<'a> {
    pub fn lock(r: &'a lk::LockRequest) -> Self {
        Recipe::Lock(&r.name)
    }
    pub fn unlock(r: &'a lk::UnlockRequest) -> Self {
        Recipe::Key(&r.key)
    }
    pub fn campaign(r: &'a el::CampaignRequest) -> Self {
        Recipe::Lock(&r.name)
    }
    pub fn leader(r: &'a el::LeaderRequest) -> Self {
        Recipe::Read(&r.name)
    }
    pub fn leader_key(k: Option<&'a el::LeaderKey>) -> Self {
        Recipe::Key(k.map_or(&[][..], |k| &k.key[..]))
    }
}

/// The Auth service's calls.
async fn auth_call(ctx: &ShardCtx, cred: &Credentials, op: AuthOp) -> Result<Response, EtcdError> {
    let auth = &*ctx.auth;
    let op = match op {
        AuthOp::Authenticate(r) => return authenticate(ctx, r).await,
        op => op,
    };
    if auth.enabled() {
        let view = auth.view();
        let caller = identify(auth, &view, cred)?;
        let own = match (&op, &caller) {
            (AuthOp::UserGet(r), Some(c)) => r.name == c.user,
            (AuthOp::RoleGet(r), Some(c)) => view
                .state
                .users
                .get(&c.user)
                .is_some_and(|u| u.roles.contains(&r.role)),
            _ => false,
        };
        if !own {
            admin(&view, caller.as_ref())?;
        }
    }
    let op = match op {
        AuthOp::UserAdd(mut r) => {
            if !r.options.is_some_and(|o| o.no_password) {
                r.hashed_password = hash(auth, std::mem::take(&mut r.password)).await?;
            }
            r.password.clear();
            AuthOp::UserAdd(r)
        }
        AuthOp::UserChangePassword(mut r) => {
            let pw = std::mem::take(&mut r.password);
            r.hashed_password = if pw.is_empty() {
                String::new()
            } else {
                hash(auth, pw).await?
            };
            AuthOp::UserChangePassword(r)
        }
        op => op,
    };
    ctx.owner.call(Request::Auth(op)).await
}

/// A bcrypt hash, made on the blocking thread (about 50-100 ms at etcd's cost 10).
async fn hash(auth: &AuthShared, password: String) -> Result<String, EtcdError> {
    let cost = auth.bcrypt_cost;
    glommio::executor()
        .spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "auth: hashing a password failed");
            EtcdError::AuthFailed
        })
}

/// Authenticate: the password checked here (on the blocking thread), then the token given
/// through the owner (a simple token is logged so that every member knows it). As etcd, if
/// the auth state changed between the check and the grant, the check is made again.
async fn authenticate(ctx: &ShardCtx, r: pb::AuthenticateRequest) -> Result<Response, EtcdError> {
    let auth = &*ctx.auth;
    for _ in 0..3 {
        if !auth.enabled() {
            return Err(EtcdError::AuthNotEnabled);
        }
        auth.may_try(&r.name)?;
        let view = auth.view();
        let revision = view.state.revision;
        let Some(user) = view.state.users.get(&r.name) else {
            auth.tried(&r.name, false);
            return Err(EtcdError::AuthFailed);
        };
        if user.no_password {
            return Err(EtcdError::NoPasswordUser);
        }
        let (password, hashed) = (r.password.clone(), user.hash.clone());
        let ok = glommio::executor()
            .spawn_blocking(move || bcrypt::verify(password, &hashed).unwrap_or(false))
            .await;
        auth.tried(&r.name, ok);
        if !ok {
            return Err(EtcdError::AuthFailed);
        }
        let (token, op) = match &auth.kind {
            TokenKind::Simple => {
                let token = auth::new_simple_token();
                let op = AuthOp::Assign {
                    user: r.name.clone(),
                    token: auth::token_digest(&token),
                    simple: true,
                    revision,
                };
                (token, op)
            }
            TokenKind::Jwt(j) => {
                let token = j.sign(&r.name, revision)?;
                let op = AuthOp::Assign {
                    user: r.name.clone(),
                    token: String::new(),
                    simple: false,
                    revision,
                };
                (token, op)
            }
        };
        match ctx.owner.call(Request::Auth(op)).await {
            Ok(Response::Auth(auth::AuthAnswer::Authenticate(mut resp))) => {
                resp.token = token;
                return Ok(Response::Auth(auth::AuthAnswer::Authenticate(resp)));
            }
            Err(EtcdError::AuthOldRevision) => continue,
            Err(e) => return Err(e),
            Ok(other) => unreachable!("an authenticate answered with {other:?}"),
        }
    }
    Err(EtcdError::AuthOldRevision)
}

/// Whether the caller is an admin (Snapshot, and what else etcd keeps for root).
pub(crate) fn may_admin(ctx: &ShardCtx, cred: &Credentials) -> Result<(), EtcdError> {
    let Some((view, caller)) = enabled(ctx, cred)? else {
        return Ok(());
    };
    admin(&view, caller.as_ref())
}

/// The common name (OID 2.5.4.3) of a certificate's subject, from its DER; None if it has none
/// or the certificate does not parse. The certificate was verified by the TLS handshake.
pub(crate) fn common_name(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    name_cn(ee.subject())
}

/// One DER element: its tag, its contents and what follows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The common name in the contents of an X.501 Name (a sequence of sets of (OID, value)).
fn name_cn(mut rdns: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !rdns.is_empty() {
        let (tag, mut set, rest) = der(rdns)?;
        rdns = rest;
        if tag != 0x31 {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = der(set)?;
            set = rest;
            let (oid_tag, oid, value) = der(atv)?;
            if tag == 0x30 && oid_tag == 0x06 && oid == CN {
                // UTF8String, PrintableString or IA5String.
                let (t, v, _) = der(value)?;
                return matches!(t, 0x0c | 0x13 | 0x16)
                    .then(|| String::from_utf8(v.to_vec()).ok())
                    .flatten();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_name() {
        // C=US, CN=alice, as DER (the contents of the Name's SEQUENCE).
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'U', b'S', 0x31,
            0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05, b'a', b'l', b'i', b'c',
            b'e',
        ];
        assert_eq!(name_cn(&name).as_deref(), Some("alice"));
        assert_eq!(name_cn(&name[..13]), None, "no CN");
        for cut in 0..name.len() {
            // Truncated input never panics.
            let _ = name_cn(&name[..cut]);
        }
        let long = [0x31, 0x84, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(name_cn(&long), None);
    }
}
