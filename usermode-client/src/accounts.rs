//! User accounts: the current user's SID and account names for SIDs.
//!
//! The SID is needed for `HKCU`; account names label the SIDs in
//! hive names (`HKU\S-1-5-21-…-1001` is `CONTOSO\alice`), and name hives the other way round
//! (`hivetrack holders CONTOSO\alice`). Windows answers through `windows_accounts`; elsewhere
//! nothing resolves, and [`SidLookup::Unsupported`] says so.

/// The answer to "which SID is this account?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidLookup {
    /// The account's SID string.
    Sid(String),
    /// The system has no such account.
    Unknown,
    /// This system cannot resolve account names (every system but Windows).
    Unsupported,
}

/// Looks up users.
pub trait Accounts {
    /// The SID string of the user running the CLI, when the system has one.
    fn current_user_sid(&self) -> Option<String>;
    /// `DOMAIN\name` of `sid`, when it resolves.
    fn account_of(&self, sid: &str) -> Option<String>;
    /// The SID of an account name (`DOMAIN\user` or `user`).
    fn sid_of(&self, account: &str) -> SidLookup;
}

/// No accounts: what every system but Windows has.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAccounts;

impl Accounts for NoAccounts {
    fn current_user_sid(&self) -> Option<String> {
        None
    }
    fn account_of(&self, _sid: &str) -> Option<String> {
        None
    }
    fn sid_of(&self, _account: &str) -> SidLookup {
        SidLookup::Unsupported
    }
}

/// The accounts of this system.
#[must_use]
pub fn system() -> Box<dyn Accounts> {
    #[cfg(windows)]
    {
        Box::new(crate::windows_accounts::WindowsAccounts)
    }
    #[cfg(not(windows))]
    {
        Box::new(NoAccounts)
    }
}
