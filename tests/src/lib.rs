//! End-to-end harness (grows with the control-plane issue).
