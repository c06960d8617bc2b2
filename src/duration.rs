//! Go-style durations (`720h`, `1h30m`, `5s`) as used in Kiln specs.
