"""Speed and memory measurements of the package against the one-at-a-time reference in legacy/ (see README.md)."""
