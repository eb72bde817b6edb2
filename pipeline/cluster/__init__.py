"""Scale-out: files and sessions across a Ray cluster (imported only with --ray)."""
