//! The state dir, what outlives a jobd: job records that never lie, job folders made
//! ahead, start-up recovery, and the file modes that keep it private.

pub(crate) mod durable;
pub(crate) mod folder;
pub(crate) mod private;
pub(crate) mod record;
pub(crate) mod restore;
