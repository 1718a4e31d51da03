//! Database Migration Procedures (tests being written).
