//! afinar checkpoint (placeholder)
