//! afinar library
