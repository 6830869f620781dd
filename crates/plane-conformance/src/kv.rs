//! Conformance cases of the kv section (to be written).

use crate::Case;

/// The kv cases, in catalog order.
pub fn cases() -> Vec<Case> {
    Vec::new()
}
