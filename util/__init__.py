"""The lowest layer: what every package shares and nothing of the project's own is imported by: the one base class
of a user's mistake (errors) and crash-safe file writes (files)."""
