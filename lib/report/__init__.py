"""The static report ``reports/<date>/index.html``, built from the manifest and results files."""
