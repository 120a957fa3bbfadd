"""The lecture's experiments as reproducible studies."""
