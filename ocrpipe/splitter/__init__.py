"""The splitter's role: one input file in, page images and page messages out (the split, its
lease, and rendering in processes)."""
