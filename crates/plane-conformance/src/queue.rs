//! Conformance cases of the queue section (to be written).

use crate::Case;

/// The queue cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
