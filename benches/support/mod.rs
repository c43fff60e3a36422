//! Scaffolding of the transport benchmark: the nodes it runs, and how it reports.

pub(crate) mod growth;
pub(crate) mod nodes;
pub(crate) mod raw_quinn;
pub(crate) mod report;
pub(crate) mod restart;
