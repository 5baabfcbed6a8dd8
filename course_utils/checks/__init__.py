"""One module of exercise checkers per chapter, named like its notebook."""
