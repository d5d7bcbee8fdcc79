"""circuits package of sparse-circuits."""
