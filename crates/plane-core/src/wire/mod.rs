//! The sans-IO wire protocol (to be written).
