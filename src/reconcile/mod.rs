//! Daily reconciliation against WeChat's bill (issue 13), the pure part: what a report is
//! made of ([`report`]) and how a day's bill rows meet coinpay's own books ([`matcher`]).
//! Nothing here does I/O; the service (`crate::service::reconcile`) downloads and archives
//! the bill, loads the books, carries out the one automatic fix and stores the report.

pub mod matcher;
pub mod report;
