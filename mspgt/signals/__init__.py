"""Layer-wise signals computed from per-group statistics: representation change and attention drift."""
