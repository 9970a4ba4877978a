//! [`Guarded`]: a pooled connection that is closed, not returned to the pool, when it is
//! dropped inside a transaction it did not end or a read it did not finish.
//!
//! A result set or a `COPY` that is not read to its end leaves the server streaming the rest of
//! it. sqlx, getting such a connection back, reads and discards everything left before the
//! connection's next use (its release check waits for the server to be ready). After a table
//! fails at its first row (the bad-value budget, an upload that failed) that is a hidden read of
//! the whole rest of the table, and a run that seems to hang at its end on a big one. Dropped
//! in a transaction, the connection would also carry a `ROLLBACK` behind that read. Closing it
//! costs a reconnect instead.

use sqlx::Database;
use sqlx::pool::PoolConnection;

/// A connection of the pool that closes itself when dropped mid-read or mid-transaction.
pub(super) struct Guarded<DB: Database> {
    connection: PoolConnection<DB>,
    /// A transaction is open (begun, not yet committed).
    pub(super) in_transaction: bool,
    /// A statement's results have not been read to their end.
    pub(super) reading: bool,
}

impl<DB: Database> Drop for Guarded<DB> {
    fn drop(&mut self) {
        if self.in_transaction || self.reading {
            self.connection.close_on_drop();
        }
    }
}

impl<DB: Database> Guarded<DB> {
    pub(super) fn new(connection: PoolConnection<DB>) -> Self {
        Self {
            connection,
            in_transaction: false,
            reading: false,
        }
    }

    /// The connection, to run statements on.
    pub(super) fn connection(&mut self) -> &mut DB::Connection {
        &mut self.connection
    }
}
