"""The bottom of the stack, imported by every stage: atomic writes, the user-input error."""
