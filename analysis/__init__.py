"""analysis package of sparse-circuits."""
