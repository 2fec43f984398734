"""MCS controller: mirrors exported Services across the clusters of a fleet."""
