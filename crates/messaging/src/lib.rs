//! berth's messaging domain. Today: subjects (NATS's dot-separated tokens with the `*` and
//! `>` wildcards) and [`Sublist`], the interest table that finds the subscriptions a
//! published subject reaches, plain and by queue group; [`interest`], a member's interest as
//! its peers see it and which peers a message goes to; [`stream`], JetStream's streams (their
//! configuration and publish rules, and the segment files they are stored in); [`consumer`],
//! JetStream's consumers as a state machine. The NATS face parses the protocol and calls in
//! here.

pub mod consumer;
pub mod interest;
pub mod stream;
pub mod subject;
pub mod sublist;

pub use interest::{Change, InterestBook};
pub use subject::SubjectError;
pub use sublist::{Matches, Sublist};
