//! InfluxQL as far as the read path needs it: a query split into statements, each with its
//! kind (from a fixed table, so it is safe to log), whether it only reads, and the databases
//! it reads or names. Nothing here executes or rewrites a query; `http::query` decides with
//! it who may run what and where it goes. There is no maintained InfluxQL parser on
//! crates.io (IOx's is not published), so this is the project's own: InfluxDB's scanner
//! (`scan`) and the few parser decisions that change where a statement ends (`classify`).

mod classify;
pub mod scan;

pub use classify::{classify, Class, ClassifyError, Source, Statement};
