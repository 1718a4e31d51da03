//! Disaster Recovery Procedures (tests being written).
