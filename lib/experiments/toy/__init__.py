"""The toy experiments of the meeting notes (docs/design.md §3): CDG / NES hyper-parameter search
with and without pretraining, the STE variants, the NES diagnosis."""
