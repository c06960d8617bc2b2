//! Expiry rules shared by Draft and Job (pure).
