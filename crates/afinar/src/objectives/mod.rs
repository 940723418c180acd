pub mod distill;
