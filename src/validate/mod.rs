//! JSON Schema validation of draft configs.
