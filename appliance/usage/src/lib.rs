//! Usage reports for the cooperative's invoicing: the accounting of BBB
//! polls (pure), the report and enrollment messages, and their signatures.
//! Shared by the node (supervisor) and global ops (`appliance-ops`).
//! **Invariant:** no I/O: no network, no files, no clock.

pub mod accounting;
pub mod protocol;

pub use accounting::{Accumulator, Gap, MemberUsage, Period, Seen, UNASSIGNED};
pub use protocol::{Ack, EnrollRequest, EnrollResponse, Envelope, NodeKey, Report, Resources, Token};
