//! Conformance cases of the request section (to be written).

use crate::Case;

/// The request cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
