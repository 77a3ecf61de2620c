"""Training loops, one module per stage; models stay free of I/O."""
