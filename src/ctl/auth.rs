//! `ferroctl auth|user|role` and `--user`, printed as etcdctl 3.4 prints them (simple format).

use std::time::Duration;

use super::flags::Flags;
use super::{fail, with_client, Failure, Global, EXIT_BAD_ARGS, EXIT_BAD_CONNECTION};
use crate::client::Client;
use crate::error::EtcdError;
use crate::kv::prefix_end;
use crate::proto::authpb::permission::Type as PermType;
use crate::proto::authpb::Permission;
use crate::proto::etcdserverpb as pb;

/// `--user name:password`, or `--user name --password pw`, or `--user name` and the password
/// read from the input (etcdctl prompts on its terminal).
pub fn user_flag(
    f: &Flags,
    input: &mut dyn std::io::BufRead,
) -> Result<Option<(String, String)>, Failure> {
    let Some(user) = f.value("user") else {
        return Ok(None);
    };
    if let Some(pw) = f.value("password") {
        return Ok(Some((user.to_string(), pw.to_string())));
    }
    if let Some((name, pw)) = user.split_once(':') {
        return Ok(Some((name.to_string(), pw.to_string())));
    }
    eprint!("Password: ");
    let mut line = String::new();
    input.read_line(&mut line).map_err(|e| Failure {
        code: EXIT_BAD_ARGS,
        message: format!("failed to read password: {e}"),
    })?;
    Ok(Some((user.to_string(), line.trim_end().to_string())))
}

/// Authenticates on `c` and keeps the token for its calls (etcdctl fails with exit code 2).
pub async fn authenticate(
    c: &mut Client,
    name: String,
    password: String,
    timeout: Duration,
) -> Result<(), Failure> {
    let req = pb::AuthenticateRequest { name, password };
    let r: Result<pb::AuthenticateResponse, _> = c
        .unary("/etcdserverpb.Auth/Authenticate", &req, Some(timeout))
        .await;
    match r {
        Ok(r) => {
            c.set_token(r.token);
            Ok(())
        }
        // clientv3 ignores "not enabled": the calls go without a token.
        Err(s) if s.message == EtcdError::AuthNotEnabled.message() => Ok(()),
        Err(s) => Err(Failure {
            code: EXIT_BAD_CONNECTION,
            message: s.message,
        }),
    }
}

/// One unary call of the Auth service.
fn call<Req, Resp>(g: &Global, method: &'static str, req: Req) -> Result<Resp, Failure>
where
    Req: prost::Message + 'static,
    Resp: prost::Message + Default + 'static,
{
    with_client(g, move |c, t| {
        Box::pin(async move {
            c.unary(&format!("/etcdserverpb.Auth/{method}"), &req, t)
                .await
        })
    })
}

/// `ferroctl auth enable|disable|status`.
pub fn auth(g: &Global, args: &[&str]) -> Result<(), Failure> {
    match args {
        ["enable", rest @ ..] => {
            if !rest.is_empty() {
                return fail(
                    EXIT_BAD_ARGS,
                    "auth enable command does not accept any arguments",
                );
            }
            // etcdctl's loop: without the root role, add it and grant it to root, then retry.
            loop {
                let r: Result<pb::AuthEnableResponse, _> =
                    call(g, "AuthEnable", pb::AuthEnableRequest {});
                match r {
                    Ok(_) => break,
                    Err(e) if e.message == EtcdError::RootRoleNotExist.message() => {
                        let _: pb::AuthRoleAddResponse = call(
                            g,
                            "RoleAdd",
                            pb::AuthRoleAddRequest {
                                name: "root".into(),
                            },
                        )?;
                        let _: pb::AuthUserGrantRoleResponse = call(
                            g,
                            "UserGrantRole",
                            pb::AuthUserGrantRoleRequest {
                                user: "root".into(),
                                role: "root".into(),
                            },
                        )?;
                    }
                    Err(e) => return Err(e),
                }
            }
            outln!("Authentication Enabled");
            Ok(())
        }
        ["disable", rest @ ..] => {
            if !rest.is_empty() {
                return fail(
                    EXIT_BAD_ARGS,
                    "auth disable command does not accept any arguments",
                );
            }
            let _: pb::AuthDisableResponse = call(g, "AuthDisable", pb::AuthDisableRequest {})?;
            outln!("Authentication Disabled");
            Ok(())
        }
        ["status", ..] => {
            let r: pb::AuthStatusResponse = call(g, "AuthStatus", pb::AuthStatusRequest {})?;
            outln!("Authentication Status: {}", r.enabled);
            outln!("AuthRevision: {}", r.auth_revision);
            Ok(())
        }
        _ => fail(EXIT_BAD_ARGS, "auth needs enable, disable or status"),
    }
}

/// Reads a new password: `--new-user-password`, one word of the input with
/// `--interactive=false`, else two lines (etcdctl prompts twice on its terminal).
fn new_password(
    f: &Flags,
    name: &str,
    input: &mut dyn std::io::BufRead,
) -> Result<String, Failure> {
    if let Some(p) = f.value("new-user-password") {
        return Ok(p.to_string());
    }
    let mut read = || {
        let mut line = String::new();
        input
            .read_line(&mut line)
            .map(|_| line)
            .map_err(|e| Failure {
                code: EXIT_BAD_ARGS,
                message: format!("failed to ask password: {e}"),
            })
    };
    if !f.bool_or("interactive", true) {
        return Ok(read()?.split_whitespace().next().unwrap_or("").to_string());
    }
    eprint!("Password of {name}: ");
    let first = read()?.trim_end().to_string();
    if first.is_empty() {
        return fail(EXIT_BAD_ARGS, "empty password");
    }
    eprint!("Type password of {name} again for confirmation: ");
    if read()?.trim_end() != first {
        return fail(EXIT_BAD_ARGS, "given passwords are different");
    }
    Ok(first)
}

/// `ferroctl user add|delete|get|list|passwd|grant-role|revoke-role`.
pub fn user(
    g: &Global,
    f: &Flags,
    args: &[&str],
    input: &mut dyn std::io::BufRead,
) -> Result<(), Failure> {
    match args {
        ["add", rest @ ..] => {
            let [arg] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user add command requires user name as its argument",
                );
            };
            let (name, password, no_password) = if f.bool("no-password") {
                (arg.to_string(), String::new(), true)
            } else if f.value("new-user-password").is_some() {
                (arg.to_string(), new_password(f, arg, input)?, false)
            } else if let Some((n, p)) = arg.split_once(':') {
                if n.is_empty() {
                    return fail(EXIT_BAD_ARGS, "empty user name is not allowed");
                }
                (n.to_string(), p.to_string(), false)
            } else {
                (arg.to_string(), new_password(f, arg, input)?, false)
            };
            let req = pb::AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(crate::proto::authpb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            };
            let _: pb::AuthUserAddResponse = call(g, "UserAdd", req)?;
            outln!("User {name} created");
            Ok(())
        }
        ["delete", rest @ ..] => {
            let [name] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user delete command requires user name as its argument",
                );
            };
            let req = pb::AuthUserDeleteRequest {
                name: name.to_string(),
            };
            let _: pb::AuthUserDeleteResponse = call(g, "UserDelete", req)?;
            outln!("User {name} deleted");
            Ok(())
        }
        ["get", rest @ ..] => {
            let [name] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user get command requires user name as its argument",
                );
            };
            let req = pb::AuthUserGetRequest {
                name: name.to_string(),
            };
            let r: pb::AuthUserGetResponse = call(g, "UserGet", req)?;
            if f.bool("detail") {
                outln!("User: {name}");
                for role in &r.roles {
                    outln!();
                    let perms = role_get(g, role)?;
                    print_role(role, &perms);
                }
            } else {
                outln!("User: {name}");
                let roles: String = r.roles.iter().map(|x| format!(" {x}")).collect();
                outln!("Roles:{roles}");
            }
            Ok(())
        }
        ["list", rest @ ..] => {
            if !rest.is_empty() {
                return fail(EXIT_BAD_ARGS, "user list command requires no arguments");
            }
            let r: pb::AuthUserListResponse = call(g, "UserList", pb::AuthUserListRequest {})?;
            for u in r.users {
                outln!("{u}");
            }
            Ok(())
        }
        ["passwd", rest @ ..] => {
            let [name] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user passwd command requires user name as its argument",
                );
            };
            let password = new_password(f, name, input)?;
            let req = pb::AuthUserChangePasswordRequest {
                name: name.to_string(),
                password,
                hashed_password: String::new(),
            };
            let _: pb::AuthUserChangePasswordResponse = call(g, "UserChangePassword", req)?;
            outln!("Password updated");
            Ok(())
        }
        ["grant-role", rest @ ..] => {
            let [user, role] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user grant command requires user name and role name as its argument",
                );
            };
            let req = pb::AuthUserGrantRoleRequest {
                user: user.to_string(),
                role: role.to_string(),
            };
            let _: pb::AuthUserGrantRoleResponse = call(g, "UserGrantRole", req)?;
            outln!("Role {role} is granted to user {user}");
            Ok(())
        }
        ["revoke-role", rest @ ..] => {
            let [user, role] = rest else {
                return fail(
                    EXIT_BAD_ARGS,
                    "user revoke-role requires user name and role name as its argument",
                );
            };
            let req = pb::AuthUserRevokeRoleRequest {
                name: user.to_string(),
                role: role.to_string(),
            };
            let _: pb::AuthUserRevokeRoleResponse = call(g, "UserRevokeRole", req)?;
            outln!("Role {role} is revoked from user {user}");
            Ok(())
        }
        _ => fail(
            EXIT_BAD_ARGS,
            "user needs add, delete, get, list, passwd, grant-role or revoke-role",
        ),
    }
}

fn role_get(g: &Global, role: &str) -> Result<Vec<Permission>, Failure> {
    let req = pb::AuthRoleGetRequest {
        role: role.to_string(),
    };
    let r: pb::AuthRoleGetResponse = call(g, "RoleGet", req)?;
    Ok(r.perm)
}

/// etcdctl's `role get` printing.
fn print_role(role: &str, perms: &[Permission]) {
    outln!("Role {role}");
    let show = |p: &Permission| {
        let key = String::from_utf8_lossy(&p.key);
        if p.range_end.is_empty() {
            outln!("\t{key}");
            return;
        }
        let end = String::from_utf8_lossy(&p.range_end);
        let mut line = if p.range_end[..] == [0] {
            format!("\t[{key}, <open ended>")
        } else {
            format!("\t[{key}, {end})")
        };
        if prefix_end(&p.key) == p.range_end[..] {
            line.push_str(&format!(" (prefix {key})"));
        }
        outln!("{line}");
    };
    let is = |p: &Permission, t: PermType| p.perm_type == t as i32;
    outln!("KV Read:");
    for p in perms {
        if is(p, PermType::Read) || is(p, PermType::Readwrite) {
            show(p);
        }
    }
    outln!("KV Write:");
    for p in perms {
        if is(p, PermType::Write) || is(p, PermType::Readwrite) {
            show(p);
        }
    }
}

/// etcdctl's `permRange`: the key and range end a grant or revoke means.
fn perm_range(f: &Flags, args: &[&str]) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let (prefix, from_key) = (f.bool("prefix"), f.bool("from-key"));
    if prefix && from_key {
        return fail(
            EXIT_BAD_ARGS,
            "--from-key and --prefix flags are mutually exclusive",
        );
    }
    let key = args[0].as_bytes().to_vec();
    if key.is_empty() {
        let end = if prefix || from_key { vec![0] } else { vec![] };
        return Ok((vec![0], end));
    }
    match args.get(1) {
        Some(_) if prefix => fail(
            EXIT_BAD_ARGS,
            "unexpected endkey argument with --prefix flag",
        ),
        Some(_) if from_key => fail(
            EXIT_BAD_ARGS,
            "unexpected endkey argument with --from-key flag",
        ),
        Some(end) => Ok((key, end.as_bytes().to_vec())),
        None if prefix => {
            let end = prefix_end(&key);
            Ok((key, end))
        }
        None if from_key => Ok((key, vec![0])),
        None => Ok((key, vec![])),
    }
}

/// `ferroctl role add|delete|get|list|grant-permission|revoke-permission`.
pub fn role(g: &Global, f: &Flags, args: &[&str]) -> Result<(), Failure> {
    let one = |rest: &[&str], what: &str| -> Result<String, Failure> {
        match rest {
            [name] => Ok(name.to_string()),
            _ => fail(
                EXIT_BAD_ARGS,
                format!("role {what} command requires role name as its argument"),
            ),
        }
    };
    match args {
        ["add", rest @ ..] => {
            let name = one(rest, "add")?;
            let req = pb::AuthRoleAddRequest { name: name.clone() };
            let _: pb::AuthRoleAddResponse = call(g, "RoleAdd", req)?;
            outln!("Role {name} created");
            Ok(())
        }
        ["delete", rest @ ..] => {
            let role = one(rest, "delete")?;
            let req = pb::AuthRoleDeleteRequest { role: role.clone() };
            let _: pb::AuthRoleDeleteResponse = call(g, "RoleDelete", req)?;
            outln!("Role {role} deleted");
            Ok(())
        }
        ["get", rest @ ..] => {
            let role = one(rest, "get")?;
            let perms = role_get(g, &role)?;
            print_role(&role, &perms);
            Ok(())
        }
        ["list", rest @ ..] => {
            if !rest.is_empty() {
                return fail(EXIT_BAD_ARGS, "role list command requires no arguments");
            }
            let r: pb::AuthRoleListResponse = call(g, "RoleList", pb::AuthRoleListRequest {})?;
            for role in r.roles {
                outln!("{role}");
            }
            Ok(())
        }
        ["grant-permission", rest @ ..] => {
            if !(3..=4).contains(&rest.len()) {
                return fail(
                    EXIT_BAD_ARGS,
                    "role grant command requires role name, permission type, and key [endkey] as its argument",
                );
            }
            let perm_type = match rest[1].to_ascii_uppercase().as_str() {
                "READ" => PermType::Read,
                "WRITE" => PermType::Write,
                "READWRITE" => PermType::Readwrite,
                _ => {
                    return fail(
                        EXIT_BAD_ARGS,
                        format!("invalid permission type: {}", rest[1]),
                    )
                }
            };
            let (key, range_end) = perm_range(f, &rest[2..])?;
            let req = pb::AuthRoleGrantPermissionRequest {
                name: rest[0].to_string(),
                perm: Some(Permission {
                    perm_type: perm_type as i32,
                    key: key.into(),
                    range_end: range_end.into(),
                }),
            };
            let _: pb::AuthRoleGrantPermissionResponse = call(g, "RoleGrantPermission", req)?;
            outln!("Role {} updated", rest[0]);
            Ok(())
        }
        ["revoke-permission", rest @ ..] => {
            if !(2..=3).contains(&rest.len()) {
                return fail(
                    EXIT_BAD_ARGS,
                    "role revoke-permission command requires role name and key [endkey] as its argument",
                );
            }
            let (key, range_end) = perm_range(f, &rest[1..])?;
            let req = pb::AuthRoleRevokePermissionRequest {
                role: rest[0].to_string(),
                key: key.clone().into(),
                range_end: range_end.clone().into(),
            };
            let _: pb::AuthRoleRevokePermissionResponse = call(g, "RoleRevokePermission", req)?;
            let (k, e) = (
                String::from_utf8_lossy(&key),
                String::from_utf8_lossy(&range_end),
            );
            let role = rest[0];
            if range_end.is_empty() {
                outln!("Permission of key {k} is revoked from role {role}");
            } else if range_end == [0] {
                outln!("Permission of range [{k}, <open ended> is revoked from role {role}");
            } else {
                outln!("Permission of range [{k}, {e}) is revoked from role {role}");
            }
            Ok(())
        }
        _ => fail(
            EXIT_BAD_ARGS,
            "role needs add, delete, get, list, grant-permission or revoke-permission",
        ),
    }
}
