//! afinar datasets (in progress)
