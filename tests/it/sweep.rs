//! Bad-input sweep (filled in below).
