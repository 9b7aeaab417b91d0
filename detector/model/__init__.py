"""The model of normal and how a comment is judged against it. Pure, no I/O."""
