"""One module of reference solutions per chapter, named like its notebook."""
