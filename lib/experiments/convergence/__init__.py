"""Reference convergence (docs/design.md §3): how close the STE variants come to CDG as the gradient
batch grows, against the reference's own noise ceiling."""
