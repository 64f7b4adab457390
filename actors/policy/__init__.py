"""Pure decisions: no awaits, no I/O."""
