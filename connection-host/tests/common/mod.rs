pub use test_kit::*;
