//! TLS end-to-end tests (ADR 0026).
