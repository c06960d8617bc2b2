//! The emptyDir workspace: safe paths, atomic writes, limits, archives.
