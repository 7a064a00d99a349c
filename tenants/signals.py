"""Console login auditing."""
