"""The pipeline, without torch: parameter files checked against each experiment's schema, grid
expansion, the papermill runner and its manifest, kernel priority."""
