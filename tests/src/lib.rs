//! End-to-end tests for Waveguide live in `tests/tests/`. This library holds nothing;
//! shared helpers for the tests go in `tests/tests/common/`.
