//! Expected failures, typed, with the exact gRPC status code and message etcd returns for each.
//!
//! Clients (etcdctl, client libraries, Kubernetes) match on these strings and codes, so they are
//! copied from etcd's `rpctypes` word for word. Broken invariants are not errors: they panic.

use std::fmt;

/// gRPC status codes (the subset etcd uses, with their wire values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Canceled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }
}

/// A gRPC status: what goes into the `grpc-status` and `grpc-message` trailers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

macro_rules! etcd_errors {
    ($( $variant:ident => ($code:ident, $msg:literal), )*) => {
        /// Every etcd server error ferrocd can return, with etcd's code and message.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum EtcdError {
            $( $variant, )*
        }

        impl EtcdError {
            pub fn code(self) -> Code {
                match self { $( EtcdError::$variant => Code::$code, )* }
            }

            pub fn message(self) -> &'static str {
                match self { $( EtcdError::$variant => $msg, )* }
            }

            /// The error whose message is `msg`, if any (used by the client side to map a
            /// status back to a typed error).
            pub fn from_message(msg: &str) -> Option<EtcdError> {
                match msg { $( $msg => Some(EtcdError::$variant), )* _ => None }
            }
        }
    };
}

etcd_errors! {
    EmptyKey => (InvalidArgument, "etcdserver: key is not provided"),
    KeyNotFound => (InvalidArgument, "etcdserver: key not found"),
    ValueProvided => (InvalidArgument, "etcdserver: value is provided"),
    LeaseProvided => (InvalidArgument, "etcdserver: lease is provided"),
    TooManyOps => (InvalidArgument, "etcdserver: too many operations in txn request"),
    DuplicateKey => (InvalidArgument, "etcdserver: duplicate key given in txn request"),
    InvalidSortOption => (InvalidArgument, "etcdserver: invalid sort option"),
    Compacted => (OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
    FutureRev => (OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
    NoSpace => (ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
    LeaseNotFound => (NotFound, "etcdserver: requested lease not found"),
    LeaseExist => (FailedPrecondition, "etcdserver: lease already exists"),
    LeaseTtlTooLarge => (OutOfRange, "etcdserver: too large lease TTL"),
    WatchCanceled => (Canceled, "etcdserver: watch canceled"),
    MemberExist => (FailedPrecondition, "etcdserver: member ID already exist"),
    PeerUrlExist => (FailedPrecondition, "etcdserver: Peer URLs already exists"),
    MemberBadUrls => (InvalidArgument, "etcdserver: given member URLs are invalid"),
    MemberNotFound => (NotFound, "etcdserver: member not found"),
    MemberNotLearner => (FailedPrecondition, "etcdserver: can only promote a learner member"),
    LearnerNotReady => (FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader"),
    TooManyLearners => (FailedPrecondition, "etcdserver: too many learner members in cluster"),
    RequestTooLarge => (InvalidArgument, "etcdserver: request is too large"),
    TooManyRequests => (ResourceExhausted, "etcdserver: too many requests"),
    RootUserNotExist => (FailedPrecondition, "etcdserver: root user does not exist"),
    RootRoleNotExist => (FailedPrecondition, "etcdserver: root user does not have root role"),
    UserAlreadyExist => (FailedPrecondition, "etcdserver: user name already exists"),
    UserEmpty => (InvalidArgument, "etcdserver: user name is empty"),
    UserNotFound => (FailedPrecondition, "etcdserver: user name not found"),
    RoleAlreadyExist => (FailedPrecondition, "etcdserver: role name already exists"),
    RoleNotFound => (FailedPrecondition, "etcdserver: role name not found"),
    RoleEmpty => (InvalidArgument, "etcdserver: role name is empty"),
    AuthFailed => (InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
    PermissionDenied => (PermissionDenied, "etcdserver: permission denied"),
    AuthNotEnabled => (FailedPrecondition, "etcdserver: authentication is not enabled"),
    InvalidAuthToken => (Unauthenticated, "etcdserver: invalid auth token"),
    NoPasswordUser => (Unknown, "auth: authentication failed, password was given for no password user"),
    InvalidAuthMgmt => (InvalidArgument, "etcdserver: invalid auth management"),
    RoleNotGranted => (FailedPrecondition, "etcdserver: role is not granted to the user"),
    PermissionNotGranted => (FailedPrecondition, "etcdserver: permission is not granted to the role"),
    PermissionNotGiven => (InvalidArgument, "etcdserver: permission not given"),
    AuthOldRevision => (InvalidArgument, "etcdserver: revision of auth store is old"),
    TooManyAuthFailures => (ResourceExhausted, "ferrocd: authentication refused: too many failed attempts for this user, retry later"),
    NoLeader => (Unavailable, "etcdserver: no leader"),
    NotLeader => (FailedPrecondition, "etcdserver: not leader"),
    LeaderChanged => (Unavailable, "etcdserver: leader changed"),
    Stopped => (Unavailable, "etcdserver: server stopped"),
    Timeout => (Unavailable, "etcdserver: request timed out"),
    Corrupt => (DataLoss, "etcdserver: corrupt cluster"),
    NotSupportedForLearner => (Unavailable, "etcdserver: rpc not supported for learner"),
    BadLeaderTransferee => (FailedPrecondition, "etcdserver: bad leader transferee"),
    MembershipNeedsCluster => (Unimplemented, "ferrocd: a member without a data directory cannot change membership"),
    Unhealthy => (Unavailable, "etcdserver: unhealthy cluster"),
    // etcd returns it as a plain error: gRPC code Unknown.
    NotEnoughStartedMembers => (Unknown, "etcdserver: re-configuration failed due to not enough started members"),
    PeerListenFailed => (Unavailable, "ferrocd: cannot listen on this member's peer URLs (its log says why); membership unchanged"),
    TimeoutLeaderTransfer => (Unavailable, "etcdserver: request timed out, leader transfer took too long"),
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EtcdError {}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        assert_eq!(EtcdError::Compacted.code(), Code::OutOfRange);
        assert_eq!(
            Status::from(EtcdError::RequestTooLarge).message,
            "etcdserver: request is too large"
        );
        assert_eq!(
            EtcdError::from_message("etcdserver: key is not provided"),
            Some(EtcdError::EmptyKey)
        );
        assert_eq!(Code::from_i32(14), Code::Unavailable);
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }
}
