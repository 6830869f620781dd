//! Conformance cases of the objects section (to be written).

use crate::Case;

/// The objects cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
