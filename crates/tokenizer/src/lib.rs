//! afinar tokenizer (placeholder)
