//! afinar engine (placeholder)
