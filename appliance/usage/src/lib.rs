//! Usage reports for the cooperative's invoicing: the accounting of BBB
//! polls (pure), the ledger that plans reports, UTC months, the report and
//! enrollment messages, and their signatures. Shared by the node
//! (supervisor) and global ops (`appliance-ops`).
//! **Invariant:** no I/O: no network, no files, no clock (`now` is always
//! an argument).

pub mod accounting;
pub mod ledger;
pub mod month;
pub mod protocol;

pub use accounting::{Accumulator, Gap, GapReason, MemberUsage, Period, Seen, UNASSIGNED};
pub use ledger::{Ledger, Numbering};
pub use month::Month;
pub use protocol::{Ack, EnrollRequest, EnrollResponse, Envelope, NodeKey, Report, Resources, Token, UpdateReport};
