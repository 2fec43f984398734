"""The all-in-one fleet: embedded clusters, simulated pods, and every component in one process."""
