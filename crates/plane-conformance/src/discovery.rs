//! Conformance cases of the discovery section (to be written).

use crate::Case;

/// The discovery cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
