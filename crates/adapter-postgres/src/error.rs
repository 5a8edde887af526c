//! Translation of driver errors into [`StoreError`]: no `sqlx` type crosses the port.

use cm_ports::StoreError;
use sqlx::migrate::MigrateError;

/// SQLSTATE codes and classes this adapter tells apart.
/// (<https://www.postgresql.org/docs/current/errcodes-appendix.html>)
mod sqlstate {
    /// Class 08: the connection failed or was refused.
    pub(super) const CLASS_CONNECTION_EXCEPTION: &str = "08";
    /// Class 22: a value did not fit its type (a document this adapter cannot store).
    pub(super) const CLASS_DATA_EXCEPTION: &str = "22";
    /// Class 23: a constraint refused a row.
    pub(super) const CLASS_INTEGRITY_CONSTRAINT_VIOLATION: &str = "23";
    /// Class 40: the transaction was rolled back (serialization failure, deadlock); retryable.
    pub(super) const CLASS_TRANSACTION_ROLLBACK: &str = "40";
    /// Class 42: the statement does not fit the schema (a table or column is missing).
    pub(super) const CLASS_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION: &str = "42";
    /// Class 53: the server is out of memory, disk or connections.
    pub(super) const CLASS_INSUFFICIENT_RESOURCES: &str = "53";
    /// Class 57: an operator or the server ended the work (shutdown, cancel, terminated).
    pub(super) const CLASS_OPERATOR_INTERVENTION: &str = "57";
    /// Class 58: an I/O error of the server itself.
    pub(super) const CLASS_SYSTEM_ERROR: &str = "58";
    /// Class XX: the server found corrupt data.
    pub(super) const CLASS_INTERNAL_ERROR: &str = "XX";
    /// A lock wait ran out (`lock_timeout`).
    pub(super) const LOCK_NOT_AVAILABLE: &str = "55P03";
    /// The database is read-only right now (a replica, or a failover in progress).
    pub(super) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
}

/// The one place a [`sqlx::Error`] becomes a [`StoreError`]: `Unavailable` for anything a
/// retry may cure (connection, pool, timeout, serialization and deadlock failures, a server
/// shutting down), `Corrupt` for rows or a schema this adapter cannot interpret.
pub(crate) fn convert_sqlx_err(err: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = format!("postgres error {code}: {}", db.message());
            if code == sqlstate::LOCK_NOT_AVAILABLE || code == sqlstate::READ_ONLY_SQL_TRANSACTION {
                return StoreError::Unavailable(message);
            }
            match code.get(..2).unwrap_or_default() {
                sqlstate::CLASS_DATA_EXCEPTION
                | sqlstate::CLASS_INTEGRITY_CONSTRAINT_VIOLATION
                | sqlstate::CLASS_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
                | sqlstate::CLASS_INTERNAL_ERROR => StoreError::Corrupt(message),
                sqlstate::CLASS_CONNECTION_EXCEPTION
                | sqlstate::CLASS_TRANSACTION_ROLLBACK
                | sqlstate::CLASS_INSUFFICIENT_RESOURCES
                | sqlstate::CLASS_OPERATOR_INTERVENTION
                | sqlstate::CLASS_SYSTEM_ERROR => StoreError::Unavailable(message),
                // Anything else the server refused may well succeed later; nothing was done.
                _ => StoreError::Unavailable(message),
            }
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. }
        | E::RowNotFound => StoreError::Corrupt(err.to_string()),
        E::Migrate(m) => convert_migrate_err(*m),
        other => StoreError::Unavailable(
            crate::tls::describe(&other).unwrap_or_else(|| other.to_string()),
        ),
    }
}

/// Migration failures: a database that cannot be reached is `Unavailable`; one whose applied
/// migrations do not match this build's (edited, missing, half-applied) is `Corrupt`.
pub(crate) fn convert_migrate_err(err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => convert_sqlx_err(e),
        other => StoreError::Corrupt(format!("database schema: {other}")),
    }
}

/// A row that holds something the domain refuses (an invalid id, an unknown status).
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}
