//! Conformance cases of the events section (to be written).

use crate::Case;

/// The events cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
