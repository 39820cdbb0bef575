//! Sans-I/O MetalBond session state machine (placeholder).
