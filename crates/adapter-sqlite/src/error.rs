//! Translation of sqlx errors into [`StoreError`]: no sqlx type crosses the port.

use cm_ports::StoreError;
use sqlx::migrate::MigrateError;

/// SQLite primary result codes this adapter tells apart (`sqlite3.h`). The driver reports the
/// extended code; its low byte is the primary one.
mod code {
    /// A generic error: for a valid statement, a schema that is not the one migrated here.
    pub(super) const ERROR: i32 = 1;
    /// The database file is malformed.
    pub(super) const CORRUPT: i32 = 11;
    /// The file is not a database.
    pub(super) const NOTADB: i32 = 26;
}

/// Maps an sqlx error to what the caller can act on: [`StoreError::Corrupt`] when what the
/// database holds cannot be interpreted, [`StoreError::Unavailable`] otherwise (I/O, busy or
/// locked database, closed or exhausted pool).
pub(crate) fn convert_sqlx_err(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::Database(db) => {
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            match primary {
                Some(code::ERROR | code::CORRUPT | code::NOTADB) => {
                    StoreError::Corrupt(format!("sqlite: {}", db.message()))
                }
                _ => StoreError::Unavailable(format!("sqlite: {}", db.message())),
            }
        }
        sqlx::Error::Migrate(m) => convert_migrate_err(*m),
        e @ (sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)) => StoreError::Corrupt(format!("sqlite: {e}")),
        e => StoreError::Unavailable(format!("sqlite: {e}")),
    }
}

/// Maps a migration failure: one that could not reach the database is classified like any
/// other sqlx error; a database whose recorded migrations disagree with this build's is corrupt.
pub(crate) fn convert_migrate_err(err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => convert_sqlx_err(e),
        other => StoreError::Corrupt(format!("sqlite migration: {other}")),
    }
}

/// A stored document that does not decode into its domain type.
pub(crate) fn corrupt_document(what: &str, err: &serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("undecodable {what} document: {err}"))
}
