"""Training the toy with each gradient estimator (beyond the notes; docs/design.md §3)."""
