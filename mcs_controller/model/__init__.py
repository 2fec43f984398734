"""Pure model: typed views, names, labels, and desired-state computation. No I/O, no clocks."""
